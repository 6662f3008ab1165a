//! The reference board's code (compiled only for `target_os = "none"`) is
//! type-checked and linted on the host against the real embassy-stm32 APIs
//! for the STM32U5A5 and the firmware core's traits, via
//! hardware/check-board.sh, which first checks that mgear-hardware's board
//! modules (FAT32 included) build without std. A cold run compiles the
//! embassy crates (minutes).

use std::path::Path;
use std::process::Command;

#[test]
fn board_code_type_checks_against_embassy_and_the_core_traits() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root");
    let out = Command::new("bash")
        .arg(repo.join("hardware/check-board.sh"))
        // Its own target dir: the one running this test may be locked.
        .env(
            "CARGO_TARGET_DIR",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("board-check"),
        )
        .output()
        .expect("run hardware/check-board.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "check-board.sh failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("board code type-checks on the host"),
        "{stdout}"
    );
    assert!(
        stdout.contains("mgear-hardware (flash_store, msc, fat) builds without std"),
        "{stdout}"
    );
}
