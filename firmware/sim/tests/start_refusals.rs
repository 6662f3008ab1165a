//! The simulator binary refuses a `--console-link` or `--nbd` path it cannot take before the
//! firmware starts, says so once, and leaves the file in the way as it was.

use std::path::Path;
use std::process::Command;

fn run(dir: &Path, nbd: &Path, link: &Path) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mgear-appliance-sim"))
        .arg("--medium")
        .arg(dir.join("medium.img"))
        .arg("--state")
        .arg(dir.join("state"))
        .arg("--nbd")
        .arg(nbd)
        .arg("--console-link")
        .arg(link)
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_path_in_the_way_is_refused_before_the_firmware_starts() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("notes.txt");
    std::fs::write(&file, b"keep me").unwrap();
    std::fs::write(dir.path().join("medium.img"), vec![0u8; 1 << 20]).unwrap();
    let cases = [
        (
            file.clone(),
            dir.path().join("tty"),
            "is not a socket; choose another --nbd",
        ),
        (
            dir.path().join("sock"),
            file.clone(),
            "is not a symlink; choose another --console-link",
        ),
    ];
    for (nbd, link, says) in cases {
        let (code, err) = run(dir.path(), &nbd, &link);
        assert_eq!(code, Some(1), "{err}");
        assert_eq!(err.matches(says).count(), 1, "{err}");
        assert!(!err.contains("firmware up"), "{err}");
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    }
}
