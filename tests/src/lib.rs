//! Shared helpers for the end-to-end scenarios in `tests/tests/`.
//!
//! The scenarios drive the real binaries (`mgear`, `mgear-appliance-sim`) the
//! way a user would. `cargo test` does not build other packages' binaries for
//! an integration test, so the test command builds the workspace first
//! (`cargo build --workspace`) and [`bin`] finds them next to the test.

use std::path::PathBuf;

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
