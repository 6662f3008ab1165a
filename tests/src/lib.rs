//! Shared helpers for the end-to-end scenarios in `tests/tests/`.
//!
//! The scenarios drive the real binaries (`mgear`, `mgear-appliance-sim`) the
//! way a user would. `cargo test` does not build other packages' binaries for
//! an integration test, so the test command builds the workspace first
//! (`cargo build --workspace`) and [`bin`] finds them next to the test.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

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
        self.cmd(args).output().expect("run mgear")
    }

    /// Run and require exit 0.
    pub fn ok(&self, args: &[&str]) -> Output {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "mgear {args:?} failed ({:?}):\nstdout: {}\nstderr: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Run with `--json` appended, require exit 0, parse stdout.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.ok(&a);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "mgear {a:?}: stdout is not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
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

/// Asserts that files `a` and `b` hold the same bytes, naming the first difference.
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
