//! Ctrl-C and SIGTERM for long commands: stop at the next chunk, cleanly.
//!
//! Capture and ingest checkpoint as they go, so the kind thing to do on
//! SIGINT/SIGTERM is not to die mid-write but to finish the chunk at hand,
//! make the checkpoint durable and say how to go on. [`install`] sets a flag
//! the pipelines poll with [`stop_requested`] and says so on stderr; a second
//! signal ends the process at once (exit 130), for the operator who really
//! means it (one within a second of the first is the same request delivered twice).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

static STOP: AtomicBool = AtomicBool::new(false);

/// Said at the first signal: a command that waits on a device which stopped answering would
/// otherwise look as if it had not heard it.
/// (A sync keeps no checkpoint: what the target applied stays, and it said "checkpoint".)
const STOPPING: &[u8] = b"\nmgear: stopping after the work at hand; what is done is kept (the \
same command goes on from there); a second Ctrl-C or SIGTERM exits at once\n";

/// Said instead by `mgear serve`, which holds no checkpoint of its own: it accepts no new
/// sync and lets the one under way finish (it said "stopping between chunks", which it does
/// only at a second signal).
const STOPPING_SERVE: &[u8] = b"\nmgear serve: stopping: no new sync is accepted, a sync under \
way is finished first; a second Ctrl-C or SIGTERM exits at once (that sync then resumes \
when serve runs again)\n";

/// Said at the second signal, which exits at once: what mgear started goes on by itself (a
/// cutover's `--resume` hook ran on, said by nothing).
const AT_ONCE_130: &[u8] = b"\nmgear: exiting at once (exit 130), without a checkpoint or a \
result; a command mgear started (a cutover's --quiesce or --resume, a QEMU) may still be \
running, and nothing more is run: a source a --quiesce quiesces stays quiesced until you run \
its --resume command yourself\n";

/// Said instead by `mgear boot`, which holds no checkpoint either.
const STOPPING_BOOT: &[u8] = b"\nmgear: stopping: the guest is stopped and the boot ends \
(exit 3); a second Ctrl-C or SIGTERM exits at once\n";

/// Said instead by a short medium write that has no checkpoint to stop at (`medium format`,
/// `rm`, `fsck --repair`): it finishes, as a medium left half-written would need a repair (a
/// format cut off read as a damaged file system, and a re-run refused it without --force).
const STOPPING_FINISH: &[u8] = b"\nmgear: finishing this step first, so the medium is not left \
half-written; a second Ctrl-C or SIGTERM exits at once (the medium may then need `mgear \
medium fsck --repair`)\n";

/// Said instead by `medium format`: cut off, it leaves no file system (a format's boot sector
/// is written last), so the way on is the format itself (it said "fsck --repair, or the
/// format run again", and fsck refuses what is no FAT32).
const STOPPING_FORMAT: &[u8] = b"\nmgear: finishing the format first; a second Ctrl-C or SIGTERM \
exits at once (the medium then holds no file system: run the same format again, with --force)\n";

/// Which stopping message the handler says: [`install_for_serve`], [`install_for_boot`].
static MODE: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);
const SERVE: u8 = 1;
const BOOT: u8 = 2;
const FINISH: u8 = 3;
const FORMAT: u8 = 4;

/// When the first signal came (monotonic nanoseconds).
static FIRST_NS: AtomicU64 = AtomicU64::new(0);

/// A second signal this soon after the first is the same request delivered twice: `timeout`
/// (and a shell's job control) signals the command and then its whole process group, and the
/// second copy ended a stopping capture at once (exit 130, no checkpoint, no report).
const SAME_REQUEST_NS: u64 = 1_000_000_000;

fn monotonic_ns() -> u64 {
    let mut t = nix::libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime is async-signal-safe and writes only `t`.
    unsafe { nix::libc::clock_gettime(nix::libc::CLOCK_MONOTONIC, &mut t) };
    (t.tv_sec as u64).saturating_mul(1_000_000_000) + t.tv_nsec as u64
}

extern "C" fn on_signal(_: nix::libc::c_int) {
    // Never 0, which marks "no signal yet".
    let now = monotonic_ns().max(1);
    STOP.store(true, Ordering::SeqCst);
    if let Err(first) = FIRST_NS.compare_exchange(0, now, Ordering::SeqCst, Ordering::SeqCst) {
        if now.saturating_sub(first) < SAME_REQUEST_NS {
            return;
        }
        // SAFETY: write(2) and _exit are async-signal-safe; the bytes are static.
        unsafe {
            let _ = nix::libc::write(2, AT_ONCE_130.as_ptr().cast(), AT_ONCE_130.len());
            nix::libc::_exit(130)
        };
    }
    let said = match MODE.load(Ordering::SeqCst) {
        SERVE => STOPPING_SERVE,
        BOOT => STOPPING_BOOT,
        FINISH => STOPPING_FINISH,
        FORMAT => STOPPING_FORMAT,
        _ => STOPPING,
    };
    // SAFETY: write(2) is async-signal-safe; the bytes are static.
    let _ = unsafe { nix::libc::write(2, said.as_ptr().cast(), said.len()) };
}

/// Catch SIGINT and SIGTERM for the rest of the process.
pub fn install() {
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only touches an atomic and calls _exit.
        let _ = unsafe { sigaction(sig, &action) };
    }
}

/// What [`install_exit_at_once`]'s handler writes (to standard output with `--json`, else to
/// standard error) before it exits 3.
static AT_ONCE: std::sync::OnceLock<(i32, Vec<u8>)> = std::sync::OnceLock::new();

extern "C" fn on_signal_exit(_: nix::libc::c_int) {
    if let Some((fd, said)) = AT_ONCE.get() {
        // SAFETY: write(2) is async-signal-safe; the bytes were made before the handler was
        // installed and are never changed or freed.
        let _ = unsafe { nix::libc::write(*fd, said.as_ptr().cast(), said.len()) };
    }
    // SAFETY: _exit is async-signal-safe and takes no locks.
    unsafe { nix::libc::_exit(crate::exit::IO) };
}

/// Catch SIGINT and SIGTERM for a command that only reads (`verify`): it has nothing to
/// checkpoint, so it ends at once, exit 3, saying so (with `--json`, as the one JSON object;
/// the signal's default killed it with exit 143 and nothing on either stream).
pub fn install_exit_at_once() {
    install_exit_at_once_saying(
        "stopped by Ctrl-C or SIGTERM; nothing was changed (this command only reads)",
        "run the same command again to finish it",
    );
}

/// [`install_exit_at_once`] saying `message` and `hint`: for a command that only waits for
/// work done elsewhere (an appliance sealing its medium), which a signal does not stop.
pub fn install_exit_at_once_saying(message: &str, hint: &str) {
    let said = if crate::output::json() {
        // The one error object every other failure prints.
        let line = crate::output::error_line(crate::exit::IO, message, hint);
        (1, format!("{line}\n").into_bytes())
    } else {
        (
            2,
            format!("\nmgear: error: {message}\nmgear: what to do: {hint}\n").into_bytes(),
        )
    };
    let _ = AT_ONCE.set(said);
    let action = SigAction::new(
        SigHandler::Handler(on_signal_exit),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only writes prepared bytes and calls _exit.
        let _ = unsafe { sigaction(sig, &action) };
    }
}

/// [`install`] for `mgear serve`, which says what stopping means for it.
pub fn install_for_serve() {
    MODE.store(SERVE, Ordering::SeqCst);
    install();
}

/// [`install`] for a medium write with no checkpoint (`medium format`, `rm`, `fsck
/// --repair`): the first signal lets it finish (it died by the signal mid-write, exit 130 or
/// 143), the second ends it at once.
pub fn install_for_finish(format: bool) {
    MODE.store(if format { FORMAT } else { FINISH }, Ordering::SeqCst);
    install();
}

/// [`install`] for `mgear boot`, which says what stopping means for it.
pub fn install_for_boot() {
    MODE.store(BOOT, Ordering::SeqCst);
    install();
}

/// Has the operator asked the command to stop?
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Sleep `d`, or less once the operator asks to stop (looked at every 50 ms): a wait of 30 s
/// between reconnect attempts held a cutover's quiesced source that long after Ctrl-C.
/// Returns whether a stop was asked for.
pub fn pause(d: std::time::Duration) -> bool {
    let until = std::time::Instant::now() + d;
    while !stop_requested() {
        let left = until.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return false;
        }
        std::thread::sleep(left.min(std::time::Duration::from_millis(50)));
    }
    true
}

/// The error a pipeline returns once it stopped on request (exit 3: the
/// work is incomplete, nothing is damaged).
pub fn stopped(done: u64, total: u64) -> crate::Error {
    crate::exit::coded_hint(
        crate::exit::IO,
        format!(
            "stopped; run the same command to resume ({} of {} done)",
            crate::units::human_bytes(done),
            crate::units::human_bytes(total)
        ),
        "nothing is damaged: run the same command to resume from the last checkpoint",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_sets_the_flag_and_names_the_next_step() {
        install();
        assert!(!stop_requested());
        nix::sys::signal::raise(Signal::SIGTERM).unwrap();
        assert!(stop_requested());
        // The same request delivered twice (`timeout` signals the command and then its process
        // group): not the operator's second Ctrl-C, which would have ended this process.
        nix::sys::signal::raise(Signal::SIGINT).unwrap();
        assert!(stop_requested());
        let e = stopped(3 << 30, 8 << 30);
        assert_eq!(crate::exit::code_of(&e), crate::exit::IO);
        assert!(
            e.to_string()
                .contains("run the same command to resume (3.00 GiB of 8.00 GiB done)"),
            "{e}"
        );
        assert!(crate::exit::hint(&e, "capture").contains("nothing is damaged"));
        STOP.store(false, Ordering::SeqCst);
        FIRST_NS.store(0, Ordering::SeqCst);
    }
}
