//! Golden-output tests (trycmd): every command's and subcommand's `--help`
//! (`tests/cmd/help/*.toml` with their `.stdout`), the human output of a
//! field journey and the exit codes of the errors users make
//! (`tests/cmd/*.trycmd`). After changing a help text or a message,
//! regenerate with
//! `TRYCMD=overwrite cargo test -p mgear-tests --test e2e golden::` and
//! review the diff (tests/README.md).

use std::path::Path;

#[test]
fn golden_cli_output() {
    let cmd = Path::new(env!("CARGO_MANIFEST_DIR")).join("cmd");
    let state = tempfile::tempdir().expect("tempdir");
    trycmd::TestCases::new()
        .register_bin("mgear", mgear_tests::bin("mgear"))
        // Capture keeps its key cache here, never in the user's home.
        .env("XDG_STATE_HOME", state.path().display().to_string())
        .case(cmd.join("help/*.toml"))
        .case(cmd.join("*.trycmd"))
        .run();
}
