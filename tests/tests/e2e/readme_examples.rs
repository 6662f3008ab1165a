//! The README's examples run as written: every fenced ```sh block whose
//! first line is a `# test` comment is run with `bash -eu -o pipefail` in a
//! scratch directory, with the built `mgear` first on `PATH`, and must exit
//! 0. Blocks that need real devices (`/dev/sdX`) or an appliance are not
//! marked; mark a new example the same way to keep it from drifting.

use std::path::Path;
use std::process::Command;

/// The marked blocks of `markdown`: (line number of the fence, script).
fn marked_blocks(markdown: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut lines = markdown.lines().enumerate();
    while let Some((n, line)) = lines.next() {
        if line.trim_end() != "```sh" {
            continue;
        }
        let body: Vec<&str> = lines
            .by_ref()
            .map(|(_, l)| l)
            .take_while(|l| l.trim_end() != "```")
            .collect();
        if body.first().is_some_and(|l| l.starts_with("# test")) {
            out.push((n + 1, body.join("\n")));
        }
    }
    out
}

#[test]
fn readme_marks_are_found_and_only_marked_blocks_count() {
    let md = "x\n```sh\n# test: a\necho a\n```\n```sh\necho b\n```\n```sh\n# test\necho c\n```\n";
    let blocks = marked_blocks(md);
    assert_eq!(blocks.len(), 2);
    assert_eq!(blocks[0], (2, "# test: a\necho a".to_string()));
    assert_eq!(blocks[1].1, "# test\necho c");
}

#[test]
fn readme_examples_run_as_written() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let blocks = marked_blocks(&readme);
    assert!(
        !blocks.is_empty(),
        "README.md has no ```sh block marked `# test`"
    );
    let bin_dir = mgear_tests::bin("mgear")
        .parent()
        .expect("target dir")
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for (line, script) in blocks {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new("bash")
            .args(["-eu", "-o", "pipefail", "-c", &script])
            .current_dir(dir.path())
            .env("PATH", &path)
            .env("XDG_STATE_HOME", dir.path().join("state"))
            .env_remove("MGEAR_APPLIANCE")
            .output()
            .expect("run bash");
        assert!(
            out.status.success(),
            "README.md block at line {line} failed:\n{script}\n{}",
            mgear_tests::output_text(&out)
        );
    }
}
