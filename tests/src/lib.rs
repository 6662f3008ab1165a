//! Shared helpers for the end-to-end scenarios in `tests/tests/`.
//!
//! The scenarios drive the real binaries (`mgear`, `mgear-appliance-sim`) the
//! way a user would. `cargo test` does not build other packages' binaries for
//! an integration test, so the test command builds the workspace first
//! (`cargo build --workspace`) and [`bin`] finds them next to the test.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Where a scenario runs `mgear`: the scratch [`Env`], or a scenario's own
/// lab (an appliance simulator's directory). [`Line`] runs through it.
pub trait Runner {
    /// `mgear ARGS`, ready to run the way this runner runs it (working
    /// directory, state directory, environment, no stdin).
    fn mgear(&self, args: &[&str]) -> Command;

    /// What a failure message adds after mgear's output (a simulator's log).
    fn failure_context(&self) -> String {
        String::new()
    }
}

impl Runner for Env {
    fn mgear(&self, args: &[&str]) -> Command {
        self.cmd(args)
    }
}

/// One `mgear` command line, built from the parts scenarios share (the
/// capture and ingest flags every scenario writes, the sample machine) plus
/// whatever a scenario adds, and run through a [`Runner`]. The run methods
/// take `&self`, so a line can be run again (a resumed capture).
#[must_use = "a Line does nothing until it is run"]
#[derive(Clone)]
pub struct Line<'r> {
    runner: &'r dyn Runner,
    args: Vec<String>,
}

impl<'r> Line<'r> {
    /// `mgear ARGS`.
    pub fn new(runner: &'r dyn Runner, args: &[&str]) -> Self {
        Line {
            runner,
            args: args.iter().map(|a| a.to_string()).collect(),
        }
    }

    /// `mgear capture --name NAME --recipient target.pub`: add where it
    /// writes (`medium`, `appliance`) and its `source`s.
    pub fn capture(runner: &'r dyn Runner, name: &str) -> Self {
        Line::new(
            runner,
            &["capture", "--name", name, "--recipient", "target.pub"],
        )
    }

    /// `mgear ingest --name NAME --identity target.key`: add where it reads
    /// (`medium`, `appliance`), the trust and the `target`.
    pub fn ingest(runner: &'r dyn Runner, name: &str) -> Self {
        Line::new(
            runner,
            &["ingest", "--name", name, "--identity", "target.key"],
        )
    }

    /// `mgear boot --build-sample D0 --marker MARKER --data-disk D1`: the
    /// two-disk sample machine. D0 boots (MBR, GRUB, Linux); its fstab mounts
    /// /srv by UUID from D1 (an ext4 data disk, half incompressible filler),
    /// so it boots only with D1 attached and then prints
    /// `MGEAR-SRV-OK MARKER-srv`. Add `--data-size` and the rest.
    pub fn sample_machine(runner: &'r dyn Runner, d0: &str, d1: &str, marker: &str) -> Self {
        Line::new(
            runner,
            &[
                "boot",
                "--build-sample",
                d0,
                "--marker",
                marker,
                "--data-disk",
                d1,
            ],
        )
    }

    /// Append `a`.
    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.to_string());
        self
    }

    /// Append `more`.
    pub fn args(mut self, more: &[&str]) -> Self {
        self.args.extend(more.iter().map(|a| a.to_string()));
        self
    }

    /// `--medium SPEC`.
    pub fn medium(self, spec: &str) -> Self {
        self.args(&["--medium", spec])
    }

    /// One `--medium` per medium of a span, in order.
    pub fn media(self, specs: &[&str]) -> Self {
        specs.iter().fold(self, |l, m| l.medium(m))
    }

    /// `--appliance TTY`.
    pub fn appliance(self, tty: &str) -> Self {
        self.args(&["--appliance", tty])
    }

    /// `--source SPEC`.
    pub fn source(self, spec: &str) -> Self {
        self.args(&["--source", spec])
    }

    /// One `--source` per disk, in order (a machine set).
    pub fn sources(self, specs: &[&str]) -> Self {
        specs.iter().fold(self, |l, s| l.source(s))
    }

    /// `--sign KEY` (a capture site's signing key).
    pub fn sign(self, key: &str) -> Self {
        self.args(&["--sign", key])
    }

    /// `--trust PUB` (the pinned capture-site key).
    pub fn trust(self, public: &str) -> Self {
        self.args(&["--trust", public])
    }

    /// `--allow-untrusted`.
    pub fn untrusted(self) -> Self {
        self.arg("--allow-untrusted")
    }

    /// `--allow-unsealed` (an ingest of a medium no appliance sealed).
    pub fn unsealed(self) -> Self {
        self.arg("--allow-unsealed")
    }

    /// `--target SPEC`.
    pub fn target(self, spec: &str) -> Self {
        self.args(&["--target", spec])
    }

    /// The arguments after `mgear`.
    pub fn argv(&self) -> Vec<&str> {
        self.args.iter().map(String::as_str).collect()
    }

    /// The command, ready to run (to add environment or a timeout).
    pub fn command(&self) -> Command {
        self.runner.mgear(&self.argv())
    }

    /// Run to completion.
    pub fn run(&self) -> Output {
        self.command().output().expect("run mgear")
    }

    /// Run and require exit 0.
    pub fn ok(&self) -> Output {
        let out = self.run();
        if !out.status.success() {
            let context = self.runner.failure_context();
            panic!(
                "mgear {:?} failed ({:?}):\nstdout: {}\nstderr: {}{}",
                self.argv(),
                out.status.code(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                if context.is_empty() {
                    String::new()
                } else {
                    format!("\n{context}")
                }
            );
        }
        out
    }

    /// Start this line in the background, its output captured (`wait_with_output`).
    pub fn spawn(&self) -> std::process::Child {
        self.command()
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn mgear")
    }

    /// Start this line slowed to `rate` (`--rate-limit`, checkpoints every MiB), let it run
    /// for `ms` milliseconds and SIGKILL it: a run stopped part-way. Panics if it finished
    /// first (the scenario needs it unfinished).
    pub fn killed_after(&self, rate: &str, ms: u64) {
        let mut child = self.slowed(&["--rate-limit", rate, "--checkpoint-bytes", "1MiB"], ms);
        let running = child.try_wait().expect("wait for mgear").is_none();
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            running,
            "mgear {:?} finished before it was stopped; the scenario needs it unfinished",
            self.argv()
        );
    }

    /// This line with `extra` arguments, started quietly and left to run `ms` milliseconds.
    fn slowed(&self, extra: &[&str], ms: u64) -> Child {
        let child = self
            .clone()
            .args(extra)
            .command()
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn mgear");
        std::thread::sleep(Duration::from_millis(ms));
        child
    }

    /// [`killed_after`](Self::killed_after), stopped by SIGTERM instead (as an operator's
    /// Ctrl-C or `timeout`): the run keeps a checkpoint at the chunk it was at, and exits 3.
    pub fn stopped_after(&self, rate: &str, ms: u64) {
        let mut child = self.slowed(&["--rate-limit", rate], ms);
        let st = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill(1)");
        assert!(
            st.success(),
            "mgear {:?} finished before it was stopped",
            self.argv()
        );
        let code = child.wait().expect("wait for mgear").code();
        assert_eq!(code, Some(3), "mgear {:?} stopped by SIGTERM", self.argv());
    }

    /// Start this `mgear serve` line in the background and wait for its
    /// first line, `listening on ADDR`; returns the server and ADDR.
    pub fn listen(&self) -> (Background, String) {
        self.listen_logging(Stdio::inherit())
    }

    /// [`Self::listen`] with the server's log (its stderr) going to `log`.
    pub fn listen_logging(&self, log: impl Into<Stdio>) -> (Background, String) {
        let mut child = self
            .command()
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn mgear serve");
        let out = child.stdout.take().expect("serve stdout");
        let server = Background(child);
        let mut line = String::new();
        BufReader::new(out)
            .read_line(&mut line)
            .expect("serve prints its address");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("mgear {:?} said {line:?}", self.argv()))
            .to_string();
        (server, addr)
    }

    /// Run with `--json` appended, require exit 0, parse stdout.
    pub fn json(&self) -> serde_json::Value {
        let line = self.clone().arg("--json");
        let out = line.ok();
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "mgear {:?}: stdout is not JSON ({e}): {}",
                line.argv(),
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }
}

/// Path of a workspace binary built in the same profile as this test.
///
/// Panics with a clear message if it has not been built: that is a test
/// set-up error, not an input error.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current test executable");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("test executable lives in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found: run `cargo build --workspace` before the tests (./test.sh does)",
        path.display()
    );
    path
}

/// A scratch directory and the `mgear` binary run inside it, the way a user
/// would: working directory, its own `XDG_STATE_HOME`, no stdin.
pub struct Env {
    /// The scratch directory (removed when the `Env` is dropped).
    pub dir: tempfile::TempDir,
}

impl Default for Env {
    fn default() -> Self {
        Self::new()
    }
}

impl Env {
    /// A fresh scratch directory.
    pub fn new() -> Self {
        Env {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// Path of `name` inside the scratch directory.
    pub fn p(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// [`p`](Self::p) as a string, for command lines.
    pub fn s(&self, name: &str) -> String {
        self.p(name).display().to_string()
    }

    /// `mgear ARGS` ready to run in the scratch directory.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin("mgear"));
        c.args(args)
            .current_dir(self.dir.path())
            .env("XDG_STATE_HOME", self.p("state"))
            .stdin(Stdio::null());
        c
    }

    /// Run `mgear ARGS` to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        self.line(args).run()
    }

    /// Run and require exit 0.
    pub fn ok(&self, args: &[&str]) -> Output {
        self.line(args).ok()
    }

    /// Run with `--json` appended, require exit 0, parse stdout.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        self.line(args).json()
    }

    /// `mgear ARGS` as a [`Line`] to add flags to.
    pub fn line(&self, args: &[&str]) -> Line<'_> {
        Line::new(self, args)
    }

    /// `mgear capture --medium MEDIUM --name NAME --recipient target.pub`
    /// (the key [`keygen`](Self::keygen) wrote); add `--source`s and the rest.
    pub fn capture(&self, medium: &str, name: &str) -> Line<'_> {
        Line::capture(self, name).medium(medium)
    }

    /// `mgear ingest --medium MEDIUM --name NAME --identity target.key`; add
    /// the trust (`trust`, `untrusted`), the `--target` and the rest.
    pub fn ingest(&self, medium: &str, name: &str) -> Line<'_> {
        Line::ingest(self, name).medium(medium)
    }

    /// `mgear serve --target file:vol.raw --medium MEDIUM --name NAME
    /// --identity target.key --listen 127.0.0.1:0`: add the trust and the
    /// rest; start it with [`Line::listen`].
    pub fn serve(&self, medium: &str, name: &str) -> Line<'_> {
        Line::new(self, &["serve", "--target", "file:vol.raw"])
            .medium(medium)
            .args(&["--name", name, "--identity", "target.key"])
            .args(&["--listen", "127.0.0.1:0"])
    }

    /// The two-disk sample machine in `d0.raw` and `d1.raw` (see
    /// [`Line::sample_machine`]); returns their paths.
    pub fn sample_machine(&self, marker: &str) -> (String, String) {
        let (d0, d1) = (self.s("d0.raw"), self.s("d1.raw"));
        Line::sample_machine(self, &d0, &d1, marker).ok();
        (d0, d1)
    }

    /// `mgear keygen --out target.key` (also writes target.pub).
    pub fn keygen(&self) {
        self.ok(&["keygen", "--out", "target.key"]);
    }

    /// Format a FAT32 image `name` of `size`; returns its `fat:` spec.
    pub fn fat(&self, name: &str, size: &str) -> String {
        self.ok(&["medium", "format", &format!("fat:{name}"), "--size", size]);
        format!("fat:{name}")
    }
}

/// A process a scenario started in the background (a server), killed and
/// reaped when dropped, however the test ends.
pub struct Background(pub Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `qemu-nbd ARGS -k SOCK IMAGE` in the background, once it serves.
///
/// Waits for its `--pid-file`, which qemu-nbd writes only once the socket listens and the
/// export is added: the socket file alone appears between bind and listen (a client then
/// was refused now and then on a loaded machine).
pub fn qemu_nbd(args: &[&str], sock: &Path, image: &Path) -> Background {
    let pid_file = sock.with_extension("pid");
    let _ = std::fs::remove_file(&pid_file);
    let mut server = Background(
        Command::new("qemu-nbd")
            .args(args)
            .arg("-k")
            .arg(sock)
            .arg("--pid-file")
            .arg(&pid_file)
            .arg(image)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("qemu-nbd (Debian: qemu-utils)"),
    );
    let start = Instant::now();
    while !std::fs::read_to_string(&pid_file).is_ok_and(|p| !p.trim().is_empty()) {
        if let Ok(Some(status)) = server.0.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = server.0.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            panic!(
                "qemu-nbd {args:?} {} exited ({status}): {err}",
                image.display()
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "qemu-nbd did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Its stderr is not read past start-up: a full pipe must not stall it.
    drop(server.0.stderr.take());
    server
}

/// Asserts that files `a` and `b` hold the same bytes, naming the first difference.
/// How many chunks the ingest state file at `path` records as durable on
/// its volume: its non-zero 32-byte slots after the 64-byte header (layout:
/// the ingest module doc of host-tools/mgear); 0 if it cannot be read.
pub fn recorded_chunks(path: &std::path::Path) -> usize {
    std::fs::read(path)
        .ok()
        .and_then(|b| {
            Some(
                b.get(64..)?
                    .chunks(32)
                    .filter(|s| s.iter().any(|&x| x != 0))
                    .count(),
            )
        })
        .unwrap_or(0)
}

/// `fsck.fat -n` of the FAT medium image `img` finds nothing to fix (the dirty mark
/// included: it makes `fsck.fat -n` exit 1).
pub fn fsck_clean(img: &std::path::Path) {
    let o = Command::new("fsck.fat")
        .arg("-n")
        .arg(img)
        .output()
        .expect("fsck.fat (Debian: dosfstools)");
    assert!(
        o.status.success(),
        "fsck.fat -n {}: {}",
        img.display(),
        output_text(&o)
    );
}

pub fn same_file(a: &std::path::Path, b: &std::path::Path) {
    let (x, y) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    assert_eq!(
        x.len(),
        y.len(),
        "{} and {} differ in size",
        a.display(),
        b.display()
    );
    if let Some(i) = x.iter().zip(&y).position(|(p, q)| p != q) {
        panic!("{} and {} differ at byte {i}", a.display(), b.display());
    }
}

/// A finished command's exit code, stdout and stderr, for assertion messages.
pub fn output_text(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A loop device over a file (`losetup --find --show`; needs root), unmounted
/// if a test mounted it and detached on drop.
pub struct Loop(pub String);

impl Loop {
    pub fn attach(file: &Path) -> Loop {
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(file)
            .output()
            .expect("losetup (Debian: mount)");
        assert!(
            out.status.success(),
            "losetup failed (needs root and loop devices): {}",
            output_text(&out)
        );
        Loop(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg(&self.0)
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}
