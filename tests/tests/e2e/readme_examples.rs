//! The READMEs' examples run as written: every fenced ```sh block of
//! README.md and host-tools/mgear/README.md is either run, or says on its
//! first line why not (`# not run: <reason>`, e.g. it needs real hardware);
//! a block with neither fails the test, so no example can drift.
//!
//! The runnable blocks of one README run in order with `bash -eu -o
//! pipefail`, in one scratch directory (as a reader following the README
//! would), with the built `mgear` first on `PATH`, and must exit 0. The
//! directory starts with what the README says comes from elsewhere:
//! `target.key`/`target.pub` (the target datacenter's key pair) and
//! `disk.raw`, a bootable sample disk standing in for `/dev/vg0/web01-snap`.

use std::path::Path;
use std::process::Command;

/// A fenced ```sh block: line number of the fence, and its lines.
#[derive(Debug, PartialEq)]
struct Block {
    line: usize,
    body: String,
}

/// What the test does with a block.
#[derive(Debug, PartialEq)]
enum Verdict {
    Run,
    /// `# not run: <reason>`, with the reason.
    NotRun(String),
}

/// Every ```sh block of `markdown`.
fn sh_blocks(markdown: &str) -> Vec<Block> {
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
        out.push(Block {
            line: n + 1,
            body: body.join("\n"),
        });
    }
    out
}

/// Run, or not with the reason given; a `# not run` without a reason is an error.
fn verdict(b: &Block) -> Result<Verdict, String> {
    let first = b.body.lines().next().unwrap_or("").trim();
    match first.strip_prefix("# not run") {
        None => Ok(Verdict::Run),
        Some(rest) => {
            let reason = rest.trim_start_matches(':').trim();
            if rest.starts_with(':') && !reason.is_empty() {
                Ok(Verdict::NotRun(reason.to_string()))
            } else {
                Err(format!(
                    "line {}: `{first}` gives no reason: write `# not run: <why>`",
                    b.line
                ))
            }
        }
    }
}

#[test]
fn readme_blocks_are_run_unless_they_say_why_not() {
    let md = "x\n```sh\necho a\n```\n```\nnot sh\n```\n```sh\n# not run: needs /dev/sdX\necho b\n```\n```sh\n# not run\necho c\n```\n";
    let blocks = sh_blocks(md);
    assert_eq!(blocks.len(), 3);
    assert_eq!(
        blocks[0],
        Block {
            line: 2,
            body: "echo a".into()
        }
    );
    assert_eq!(verdict(&blocks[0]), Ok(Verdict::Run));
    assert_eq!(
        verdict(&blocks[1]),
        Ok(Verdict::NotRun("needs /dev/sdX".into()))
    );
    assert!(verdict(&blocks[2]).unwrap_err().contains("line 12"));
}

/// The scratch directory's starting files (see the module doc).
fn prepare(dir: &Path) {
    let mgear = mgear_tests::bin("mgear");
    for args in [
        &["keygen", "--out", "target.key"][..],
        &["boot", "--build-sample", "disk.raw"][..],
    ] {
        let out = Command::new(&mgear)
            .args(args)
            .current_dir(dir)
            .env("XDG_STATE_HOME", dir.join("state"))
            .output()
            .expect("run mgear");
        assert!(
            out.status.success(),
            "preparing the README's files: mgear {args:?}: {}",
            mgear_tests::output_text(&out)
        );
    }
}

/// Runs `rel`'s runnable blocks; returns how many ran.
fn run_readme(rel: &str) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    let blocks = sh_blocks(&text);
    let mut run = Vec::new();
    for b in &blocks {
        match verdict(b) {
            Ok(Verdict::Run) => run.push(b),
            Ok(Verdict::NotRun(_)) => {}
            Err(e) => panic!("{rel} {e}"),
        }
    }
    if run.is_empty() {
        return 0;
    }
    let count = run.len();
    let bin_dir = mgear_tests::bin("mgear")
        .parent()
        .expect("target dir")
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    prepare(dir.path());
    for b in run {
        let out = Command::new("bash")
            .args(["-eu", "-o", "pipefail", "-c", &b.body])
            .current_dir(dir.path())
            .env("PATH", &path)
            .env("XDG_STATE_HOME", dir.path().join("state"))
            .env_remove("MGEAR_APPLIANCE")
            .output()
            .expect("run bash");
        assert!(
            out.status.success(),
            "{rel}: the block at line {} failed:\n{}\n{}",
            b.line,
            b.body,
            mgear_tests::output_text(&out)
        );
    }
    count
}

#[test]
fn readme_examples_run_as_written() {
    assert!(
        run_readme("README.md") >= 3,
        "README.md lost its runnable examples"
    );
}

#[test]
fn mgear_readme_examples_run_as_written() {
    // Its examples are option synopses (plain fences); a ```sh block added
    // there is held to the same rule.
    run_readme("host-tools/mgear/README.md");
}
