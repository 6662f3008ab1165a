//! Running external tools (qemu-img, qemu-nbd, virsh) with errors that
//! name the Debian package to install.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::mpsc;
use std::thread::JoinHandle;
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

/// Keeps a child started by [`spawn_tied`] tied to this process: while it
/// lives, the thread that spawned the child lives. Drop it only once the
/// child has exited (or been reaped), or the child gets SIGTERM.
#[derive(Debug)]
pub(crate) struct Tie {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Tie {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Spawn `cmd` so that it dies with this process, also when this process is
/// SIGKILLed (no `Drop` runs then): the child asks the kernel for SIGTERM
/// when its parent goes (`PR_SET_PDEATHSIG`). The kernel sends it when the
/// *thread* that forked the child exits, not the process, so the child is
/// spawned from a thread of its own that lives as long as the returned
/// [`Tie`]: a volume opened on a worker thread that ends before the volume
/// does would otherwise lose its server mid-run. SIGTERM, not SIGKILL: a
/// `qemu-nbd` flushes and releases its image lock on SIGTERM.
pub(crate) fn spawn_tied(mut cmd: Command, what: &str) -> Result<(Child, Tie)> {
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs in the forked child before exec and only
    // makes the async-signal-safe prctl(2) and getppid(2) calls.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
                .map_err(std::io::Error::from)?;
            // The parent died between fork and prctl: no signal will come.
            if nix::unistd::getppid() != parent {
                return Err(std::io::Error::other("the parent process exited"));
            }
            Ok(())
        });
    }
    let (child_tx, child_rx) = mpsc::channel();
    let (stop, stopped) = mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("tied-child".into())
        .spawn(move || {
            let _ = child_tx.send(cmd.spawn());
            // Returns once the Tie drops its sender.
            let _ = stopped.recv();
        })
        .map_err(|e| Error::io(format!("starting a thread for {what}"), e))?;
    let tie = Tie {
        stop: Some(stop),
        thread: Some(thread),
    };
    let child = child_rx
        .recv()
        .map_err(|_| Error::Tool(format!("starting {what}: its spawning thread ended")))?
        .map_err(|e| Error::io(format!("starting {what}"), e))?;
    Ok((child, tie))
}

/// The processes (`qemu-nbd (pid 1234)`) that have `path` open, as far as
/// /proc shows this user: who holds a qemu image lock, for the message.
pub(crate) fn holders_of(path: &Path) -> Vec<String> {
    let Ok(target) = std::fs::canonicalize(path) else {
        return Vec::new();
    };
    let me = std::process::id();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        if fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l == target))
        {
            let comm = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default();
            let comm = comm.trim();
            found.push(format!(
                "{} (pid {pid})",
                if comm.is_empty() { "a process" } else { comm }
            ));
        }
    }
    found
}

/// The last lines of what a tool printed on stderr, for an error message
/// that always names a reason (`it printed nothing` when it did not).
pub(crate) fn stderr_tail(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        return "it printed nothing".into();
    }
    format!(
        "it printed: {}",
        lines[lines.len().saturating_sub(3)..].join(" / ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_tail_always_names_a_reason() {
        assert_eq!(stderr_tail(""), "it printed nothing");
        assert_eq!(stderr_tail(" \n\n"), "it printed nothing");
        assert_eq!(stderr_tail("a\nb\n\nc\nd\n"), "it printed: b / c / d");
    }

    #[test]
    fn a_tied_child_dies_when_its_tie_goes() {
        let mut cmd = Command::new("sleep");
        cmd.arg("600");
        let (mut child, tie) = spawn_tied(cmd, "sleep").unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert!(matches!(child.try_wait(), Ok(None)), "runs while tied");
        drop(tie);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                use std::os::unix::process::ExitStatusExt as _;
                assert_eq!(status.signal(), Some(nix::libc::SIGTERM));
                break;
            }
            assert!(Instant::now() < deadline, "the child outlived its tie");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn holders_of_names_the_process_with_the_file_open() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("held");
        std::fs::write(&f, b"x").unwrap();
        let mut child = Command::new("sh")
            .arg("-c")
            .arg("exec 3<\"$0\"; exec sleep 600")
            .arg(&f)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let want = format!("sleep (pid {})", child.id());
        while !holders_of(&f).contains(&want) {
            assert!(Instant::now() < deadline, "{:?}", holders_of(&f));
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Run as a child test process by `a_tied_child_dies_with_a_killed_process`:
    /// spawn a tied `sleep`, print its pid, wait to be SIGKILLed.
    #[test]
    fn helper_tied_child_then_wait() {
        if std::env::var_os("MGEAR_TIED_HELPER").is_none() {
            return;
        }
        let mut cmd = Command::new("sleep");
        cmd.arg("600");
        let (child, _tie) = spawn_tied(cmd, "sleep").unwrap();
        println!("tied pid {}", child.id());
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        std::thread::sleep(Duration::from_secs(600));
    }

    #[test]
    fn a_tied_child_dies_with_a_killed_process() {
        use std::io::BufRead as _;
        let mut helper = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "tool::tests::helper_tied_child_then_wait",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("MGEAR_TIED_HELPER", "1")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(helper.stdout.take().unwrap()).lines();
        let pid: i32 = lines
            .by_ref()
            .map_while(std::result::Result::ok)
            // libtest prints `test NAME ... ` before it on the same line.
            .find_map(|l| {
                l.split_once("tied pid ")
                    .map(|(_, p)| p.trim().parse().unwrap())
            })
            .expect("the helper printed its child's pid");
        // SIGKILL: no Drop runs, only the kernel can stop the child now.
        helper.kill().unwrap();
        helper.wait().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        // Gone, or a zombie nobody reaps (PID 1 of a container may not).
        while std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            !s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        }) {
            assert!(
                Instant::now() < deadline,
                "the tied child {pid} outlived its killed parent"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
