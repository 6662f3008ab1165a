//! Running external tools (qemu-img, qemu-nbd, virsh) with errors that
//! name the Debian package to install.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// The full path of `tool` on `PATH`, or an error naming its package.
pub(crate) fn require(tool: &str, package: &str) -> Result<PathBuf> {
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join(tool))
                .find(|p| p.is_file())
        })
        .ok_or_else(|| {
            Error::Usage(format!(
                "{tool} is not installed: install it with `apt-get install {package}`"
            ))
        })
}

/// Run `cmd`; its stdout, or an error carrying its stderr.
pub(crate) fn run(cmd: &mut Command, what: &str) -> Result<Vec<u8>> {
    let out = cmd
        .output()
        .map_err(|e| Error::io(format!("running {what}"), e))?;
    succeeded(out, what).map(|o| o.stdout)
}

/// The output of a finished `what`, or an error carrying its stderr.
pub(crate) fn succeeded(out: Output, what: &str) -> Result<Output> {
    if !out.status.success() {
        return Err(Error::Tool(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out)
}

/// Stop the `qemu-nbd` that served a volume once its clients disconnected:
/// wait up to `grace` for it to exit on its own (it flushes first), SIGTERM
/// it if it does not, and remove its socket. A non-zero exit is an error
/// (the image may not hold every write).
pub(crate) fn stop_qemu_nbd(
    server: &mut Option<Child>,
    sock: &Path,
    grace: Duration,
) -> Result<()> {
    let Some(mut child) = server.take() else {
        return Ok(());
    };
    let deadline = Instant::now() + grace;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => break,
            Ok(Some(status)) => {
                return Err(Error::Tool(format!("qemu-nbd ended with {status}")));
            }
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                terminate(&mut child);
                break;
            }
        }
    }
    let _ = std::fs::remove_file(sock);
    Ok(())
}

/// The drop path of a volume served by `qemu-nbd`: the same as
/// [`stop_qemu_nbd`] without an error to report.
pub(crate) fn reap_qemu_nbd(server: &mut Option<Child>, sock: &Path, grace: Duration) {
    if let Some(mut child) = server.take() {
        let deadline = Instant::now() + grace;
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        terminate(&mut child);
        let _ = std::fs::remove_file(sock);
    }
}

/// SIGTERM (qemu-nbd flushes and exits), then wait.
pub(crate) fn terminate(child: &mut Child) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    let _ = child.wait();
}
