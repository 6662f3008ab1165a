//! Field-proof capture (issue 13): the mistakes a new field engineer makes
//! end in a clear refusal before anything is written, or can be undone.
//!
//! - check before writing: a directory, a qcow2/VMDK container and a disk
//!   too large for the medium are refused with the medium byte-for-byte
//!   unchanged; `--dry-run` prints the plan and writes nothing;
//! - undo: `capture --abort`, `medium rm` (finished data and dependent
//!   deltas need `--force`), `medium fsck [--repair]`;
//! - keys by capture id: `web01` on a second medium leaves the first's
//!   deltas and syncs working; `keys list|forget`; `--name WEB01` beside
//!   `web01` is named as the same capture;
//! - guard rails: a finished capture is not stored twice; `sync` from the
//!   wrong disk is refused before it sends anything;
//! - appliance commands report the state they really left the appliance in.

use std::fs;
use std::path::Path;
use std::process::{Output, Stdio};

use mgear_tests::{output_text, Background, Env};
use rand::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};

fn random_disk(path: &Path, bytes: usize, seed: u64) {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let mut disk = vec![0u8; bytes];
    rng.fill_bytes(&mut disk);
    disk[510] = 0x55;
    disk[511] = 0xaa;
    fs::write(path, disk).unwrap();
}

fn sha(path: &Path) -> Vec<u8> {
    Sha256::digest(fs::read(path).unwrap()).to_vec()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn capture(e: &Env, source: &str, medium: &str, name: &str, extra: &[&str]) -> Output {
    e.capture(medium, name).source(source).args(extra).run()
}

fn code(o: &Output) -> Option<i32> {
    o.status.code()
}

#[test]
fn check_before_writing_refuses_and_plans_without_writing() {
    let e = Env::new();
    e.keygen();
    let m = e.fat("m.img", "64MiB");
    let img = e.p("m.img");
    let before = sha(&img);

    // A directory: refused by name, nothing written.
    fs::create_dir(e.p("srcdir")).unwrap();
    let o = capture(&e, "srcdir", &m, "web01", &[]);
    assert_eq!(code(&o), Some(2), "{}", output_text(&o));
    assert!(err(&o).contains("is a directory"), "{}", output_text(&o));
    assert_eq!(sha(&img), before, "a refused directory changed the medium");

    // Containers: refused with the way to capture them.
    let mut q = b"QFI\xfb\0\0\0\x03".to_vec();
    q.resize(2 << 20, 0);
    fs::write(e.p("web.qcow2"), &q).unwrap();
    let o = capture(&e, "web.qcow2", &m, "web01", &[]);
    assert_eq!(code(&o), Some(2), "{}", output_text(&o));
    assert!(
        err(&o).contains("qcow2")
            && err(&o).contains("qemu-nbd -r -t -f qcow2 --socket \"$PWD/web.sock\" web.qcow2"),
        "{}",
        output_text(&o)
    );
    let mut v = b"KDMV".to_vec();
    v.resize(1 << 20, 0);
    fs::write(e.p("web.vmdk"), &v).unwrap();
    let o = capture(&e, "web.vmdk", &m, "web01", &[]);
    assert_eq!(code(&o), Some(2), "{}", output_text(&o));
    assert!(err(&o).contains("-f vmdk"), "{}", output_text(&o));
    assert_eq!(sha(&img), before, "a refused container changed the medium");

    // The plan of a disk that fits: printed, nothing written.
    random_disk(&e.p("disk.raw"), 8 << 20, 1);
    let o = capture(&e, "disk.raw", &m, "web01", &["--dry-run"]);
    assert_eq!(code(&o), Some(0), "{}", output_text(&o));
    assert!(
        out(&o).contains("nothing written") && out(&o).contains("fits"),
        "{}",
        output_text(&o)
    );
    // Without a key the plan says what the capture would (it said "fits", exit 0).
    let o = e.run(&[
        "capture",
        "--medium",
        &m,
        "--name",
        "web01",
        "--source",
        &e.s("disk.raw"),
        "--dry-run",
    ]);
    assert_eq!(code(&o), Some(2), "{}", output_text(&o));
    assert!(
        err(&o).contains("a new capture needs --recipient"),
        "{}",
        output_text(&o)
    );
    // A weak passphrase and the target's identity as --sign: refused as the capture refuses
    // them (the plan said "fits", exit 0).
    fs::write(e.p("weak.pw"), "short1\n").unwrap();
    let o = capture(
        &e,
        "disk.raw",
        &m,
        "web01",
        &["--dry-run", "--passphrase-file", &e.s("weak.pw")],
    );
    assert_eq!(code(&o), Some(2), "{}", output_text(&o));
    assert!(err(&o).contains("is too weak"), "{}", output_text(&o));
    let o = capture(
        &e,
        "disk.raw",
        &m,
        "web01",
        &["--dry-run", "--sign", &e.s("target.key")],
    );
    assert_eq!(code(&o), Some(2), "{}", output_text(&o));
    assert!(err(&o).contains("SECRET identity"), "{}", output_text(&o));
    let plan = e
        .capture(&m, "web01")
        .source("disk.raw")
        .arg("--dry-run")
        .json();
    assert_eq!(plan["kind"], "new");
    assert_eq!(plan["fits"], true);
    let est = plan["estimate"]["stored_bytes"].as_u64().unwrap();
    // Random data does not compress: the estimate is the disk and a little.
    assert!((8 << 20..12 << 20).contains(&est), "{plan}");
    assert_eq!(sha(&img), before, "--dry-run changed the medium");

    // A disk that cannot fit: refused before writing, saying how much is missing.
    random_disk(&e.p("big.raw"), 80 << 20, 2);
    let o = capture(&e, "big.raw", &m, "big", &["--dry-run"]);
    assert_eq!(code(&o), Some(3), "{}", output_text(&o));
    assert!(out(&o).contains("DOES NOT FIT"), "{}", output_text(&o));
    // `ok` follows the exit code (README): false with exit 3.
    let o = capture(&e, "big.raw", &m, "big", &["--dry-run", "--json"]);
    assert_eq!(code(&o), Some(3), "{}", output_text(&o));
    let v: serde_json::Value = serde_json::from_str(&out(&o)).expect("one JSON object");
    assert_eq!(
        (&v["ok"], &v["fits"]),
        (&false.into(), &false.into()),
        "{v}"
    );
    let o = capture(&e, "big.raw", &m, "big", &[]);
    assert_eq!(code(&o), Some(3), "{}", output_text(&o));
    assert!(
        err(&o).contains("missing")
            && err(&o).contains("nothing was written")
            && !err(&o).contains("check that the path"),
        "{}",
        output_text(&o)
    );
    let o = capture(&e, "big.raw", &m, "big", &["--json"]);
    let v: serde_json::Value = serde_json::from_str(&out(&o)).expect("one JSON object");
    let hint = v["error"]["hint"].as_str().unwrap_or_default();
    assert!(hint.starts_with("give one more medium"), "{v}");
    assert_eq!(
        sha(&img),
        before,
        "a capture that cannot fit changed the medium"
    );
    let o = e.ok(&["inspect", "--medium", &m]);
    assert!(out(&o).contains("0 capture"), "{}", output_text(&o));

    // A delta's bound is its whole disk: on a medium with less room the plan says what it
    // depends on rather than "fits".
    random_disk(&e.p("half.raw"), 40 << 20, 3);
    e.capture(&m, "half").source("half.raw").ok();
    let o = capture(&e, "half.raw", &m, "half", &["--delta", "--dry-run"]);
    assert_eq!(code(&o), Some(0), "{}", output_text(&o));
    assert!(
        out(&o).contains("fits if less than that changed"),
        "{}",
        output_text(&o)
    );
}

/// The same capture command run again after it finished is refused (already captured); the
/// finished run's report, with the commit digest the target pins, stays (the refusal's report
/// was written over it). A stop that leaves something unfinished still writes its report.
#[test]
fn a_refused_re_run_keeps_the_finished_capture_report() {
    let e = Env::new();
    e.keygen();
    random_disk(&e.p("disk.raw"), 2 << 20, 7);
    std::fs::create_dir(e.p("m")).unwrap();
    let o = capture(&e, "disk.raw", "dir:m", "web01", &["--report", "r.json"]);
    assert_eq!(code(&o), Some(0), "{}", output_text(&o));
    let before = fs::read(e.p("r.json")).unwrap();
    let o = capture(&e, "disk.raw", "dir:m", "web01", &["--report", "r.json"]);
    assert_eq!(code(&o), Some(2), "{}", output_text(&o));
    assert!(
        err(&o).contains("is the report of the finished capture of web01: kept"),
        "{}",
        output_text(&o)
    );
    assert_eq!(fs::read(e.p("r.json")).unwrap(), before);
    let r: serde_json::Value = serde_json::from_slice(&before).unwrap();
    assert_eq!(r["ok"], true, "{r}");
    // Another capture's report at that name is replaced by this refusal's.
    let o = capture(&e, "disk.raw", "dir:m", "web02", &["--report", "r.json"]);
    assert_eq!(code(&o), Some(0), "{}", output_text(&o));
    let o = capture(&e, "disk.raw", "dir:m", "web01", &["--report", "r.json"]);
    assert_eq!(code(&o), Some(2), "{}", output_text(&o));
    let r: serde_json::Value = serde_json::from_slice(&fs::read(e.p("r.json")).unwrap()).unwrap();
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["result"]["name"], "web01", "{r}");
}

#[test]
fn undo_removes_unfinished_and_unwanted_captures_and_crash_leftovers() {
    let e = Env::new();
    e.keygen();
    let m = e.fat("m.img", "40MiB");
    // Too big for the medium, forced past the space check: it fills the
    // medium and leaves an unfinished generation.
    random_disk(&e.p("big.raw"), 48 << 20, 3);
    let o = capture(
        &e,
        "big.raw",
        &m,
        "big",
        &[
            "--skip-space-check",
            "--checkpoint-bytes",
            "1MiB",
            "--report",
            "full.json",
        ],
    );
    assert_eq!(code(&o), Some(3), "{}", output_text(&o));
    // The stop has its report, as an ingest's does (nothing was written).
    let r: serde_json::Value =
        serde_json::from_slice(&fs::read(e.p("full.json")).unwrap()).unwrap();
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["result"]["error"]["code"], 3, "{r}");
    assert_eq!(r["source"], "big.raw", "{r}");
    // The generation it left unfinished, to be resumed (it said null), and the capture's id
    // (what `keys forget --capture-id` takes; it said null).
    assert_eq!(r["result"]["generation"], 1, "{r}");
    let id = e.json(&["keys", "list"])["keys"][0]["capture_id"].clone();
    assert!(id.is_string(), "{id}");
    assert_eq!(r["digests"]["capture_id"], id, "{r}");
    // The keys a finished capture's report has, empty (they were missing).
    assert_eq!(
        r["digests"]["commit_digest"],
        serde_json::Value::Null,
        "{r}"
    );
    assert!(r["digests"].is_object(), "{r}");
    assert_eq!(r["signatures"], serde_json::json!([]), "{r}");
    assert_eq!(r["warnings"], serde_json::json!([]), "{r}");
    let t = fs::read_to_string(e.p("full.txt")).unwrap();
    assert!(t.contains("STOPPED") && t.contains("exit 3"), "{t}");
    let o = e.run(&["verify", "--medium", &m]);
    assert_eq!(code(&o), Some(1), "{}", output_text(&o));
    let abort = format!("mgear capture --abort --medium {m} --name big");
    assert!(
        out(&o).contains(&abort) && !output_text(&o).contains("MEDIUM"),
        "verify names the command that removes it, on this medium: {}",
        output_text(&o)
    );
    let o = e.run(&["medium", "fsck", "--medium", &m]);
    assert_eq!(code(&o), Some(1), "{}", output_text(&o));
    assert!(
        out(&o).contains("unfinished MGEAR/big/G0001") && out(&o).contains(&abort),
        "{}",
        output_text(&o)
    );
    // Its ingest is refused with what to do about an unfinished capture, not about the pins.
    // A report of the refusal goes to the ticket too.
    let o = e
        .ingest(&m, "big")
        .untrusted()
        .target("file:big.out")
        .args(&["--report", "stop.json"])
        .run();
    assert_eq!(code(&o), Some(1), "{}", output_text(&o));
    assert!(
        err(&o).contains("has no finished generation")
            && err(&o).contains("resume it at the capture site")
            && !err(&o).contains("pinned"),
        "{}",
        output_text(&o)
    );
    let r: serde_json::Value =
        serde_json::from_slice(&fs::read(e.p("stop.json")).unwrap()).unwrap();
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["result"]["error"]["code"], 1, "{r}");
    assert_eq!(r["result"]["generation"], serde_json::Value::Null, "{r}");
    let t = fs::read_to_string(e.p("stop.txt")).unwrap();
    assert!(t.contains("STOPPED, nothing verified (exit 1"), "{t}");
    assert!(t.contains("big, no generation chosen"), "{t}");
    // A re-run with other parameters names the command too.
    let o = capture(
        &e,
        "big.raw",
        &m,
        "big",
        &["--skip-space-check", "--chunk-size", "64KiB"],
    );
    assert_eq!(code(&o), Some(2), "{}", output_text(&o));
    assert!(
        err(&o).contains("mgear capture --abort"),
        "{}",
        output_text(&o)
    );
    // Its dry run says the same (it planned a resume that "fits"), and for another recipient.
    let o = capture(
        &e,
        "big.raw",
        &m,
        "big",
        &["--skip-space-check", "--chunk-size", "64KiB", "--dry-run"],
    );
    assert_eq!(code(&o), Some(2), "{}", output_text(&o));
    assert!(
        err(&o).contains("the chunk size was 1.00 MiB"),
        "{}",
        output_text(&o)
    );
    e.ok(&["keygen", "--out", "other.key"]);
    let o = capture(
        &e,
        "big.raw",
        &m,
        "big",
        &[
            "--skip-space-check",
            "--recipient",
            "other.pub",
            "--dry-run",
        ],
    );
    assert_eq!(code(&o), Some(2), "{}", output_text(&o));
    assert!(
        err(&o).contains("key slot was made for"),
        "{}",
        output_text(&o)
    );
    let o = e.ok(&["capture", "--abort", "--medium", &m, "--name", "big"]);
    assert!(out(&o).contains("aborted big"), "{}", output_text(&o));
    let o = e.ok(&["inspect", "--medium", &m]);
    assert!(out(&o).contains("0 capture"), "{}", output_text(&o));
    // Emptied, not the wrong medium: said as such.
    let o = e.run(&["verify", "--medium", &m]);
    assert_eq!(code(&o), Some(1), "{}", output_text(&o));
    assert!(
        err(&o).contains("its MGEAR directory holds none"),
        "{}",
        output_text(&o)
    );
    // Filling the medium leaked no cluster: fsck.fat finds nothing to fix
    // before any repair, and --repair leaves it so.
    let o = e.ok(&["medium", "fsck", "--medium", &m]);
    assert!(out(&o).contains("fsck.fat: clean"), "{}", output_text(&o));
    e.ok(&["medium", "fsck", "--medium", &m, "--repair"]);
    let o = e.ok(&["medium", "fsck", "--medium", &m]);
    assert!(out(&o).contains("no leftovers"), "{}", output_text(&o));

    // A finished capture with a delta on it: removing the parent needs
    // --force and names the delta; --force removes both.
    random_disk(&e.p("disk.raw"), 4 << 20, 4);
    assert_eq!(code(&capture(&e, "disk.raw", &m, "web01", &[])), Some(0));
    let mut d = fs::read(e.p("disk.raw")).unwrap();
    d[3 << 20] ^= 0xff;
    fs::write(e.p("disk.raw"), d).unwrap();
    let o = capture(&e, "disk.raw", &m, "web01", &["--delta"]);
    assert_eq!(code(&o), Some(0), "{}", output_text(&o));
    let before = sha(&e.p("m.img"));
    let o = e.run(&[
        "medium",
        "rm",
        "--medium",
        &m,
        "--name",
        "web01",
        "--generation",
        "1",
    ]);
    assert_eq!(code(&o), Some(2), "{}", output_text(&o));
    assert!(
        err(&o).contains("generation 2 depends on it") && err(&o).contains("--force"),
        "{}",
        output_text(&o)
    );
    assert_eq!(
        sha(&e.p("m.img")),
        before,
        "a refused rm changed the medium"
    );
    let r = e.json(&[
        "medium",
        "rm",
        "--medium",
        &m,
        "--name",
        "WEB01",
        "--generation",
        "1",
        "--force",
    ]);
    assert_eq!(r["removed"], serde_json::json!([1, 2]), "{r}");
    assert_eq!(r["capture_removed"], true, "{r}");
    let o = e.ok(&["inspect", "--medium", &m]);
    assert!(out(&o).contains("0 capture"), "{}", output_text(&o));
    // fsck.fat agrees the volume is clean after the removals.
    let o = e.ok(&["medium", "fsck", "--medium", &m]);
    assert!(
        out(&o).contains("no leftovers")
            && (out(&o).contains("fsck.fat: clean") || which("fsck.fat").is_none()),
        "{}",
        output_text(&o)
    );

    // Crash leftovers on a mounted-directory medium: a generation with
    // nothing durable, a half-written replacement, an empty capture.
    fs::create_dir_all(e.p("mnt/MGEAR/db02/G0001")).unwrap();
    fs::create_dir_all(e.p("mnt/MGEAR/app03")).unwrap();
    fs::write(e.p("mnt/MGEAR/db02/G0001/SEG-00000"), b"torn").unwrap();
    assert_eq!(
        code(&capture(&e, "disk.raw", "dir:mnt", "web01", &[])),
        Some(0)
    );
    fs::write(e.p("mnt/MGEAR/web01/G0001/COMMIT.TMP"), b"half").unwrap();
    let o = e.run(&["medium", "fsck", "--medium", "dir:mnt"]);
    assert_eq!(code(&o), Some(1), "{}", output_text(&o));
    for what in ["MGEAR/db02/G0001", "COMMIT.TMP", "MGEAR/app03", "--repair"] {
        assert!(out(&o).contains(what), "{what}: {}", output_text(&o));
    }
    let o = e.run(&["medium", "fsck", "--medium", "dir:mnt", "--json"]);
    assert_eq!(code(&o), Some(1), "{}", output_text(&o));
    let v: serde_json::Value = serde_json::from_str(&out(&o)).expect("one JSON object");
    assert_eq!(
        (&v["ok"], &v["clean"]),
        (&false.into(), &false.into()),
        "{v}"
    );
    // Leftovers, not damage: the next step is theirs ("the data did not check out: do not
    // use it" was said of captures that only stopped).
    let hint = v["error"]["hint"].as_str().unwrap_or_default();
    assert!(
        hint.contains("fsck --repair` removes the leftovers") && !hint.contains("do not use it"),
        "{v}"
    );
    let o = e.ok(&["medium", "fsck", "--medium", "dir:mnt", "--repair"]);
    assert!(out(&o).contains("removed"), "{}", output_text(&o));
    assert!(!e.p("mnt/MGEAR/db02").exists() && !e.p("mnt/MGEAR/app03").exists());
    assert!(!e.p("mnt/MGEAR/web01/G0001/COMMIT.TMP").exists());
    let o = e.ok(&["medium", "fsck", "--medium", "dir:mnt"]);
    assert!(out(&o).contains("no leftovers"), "{}", output_text(&o));
    // The finished capture is untouched and still verifies.
    e.ok(&[
        "verify",
        "--medium",
        "dir:mnt",
        "--identity",
        "target.key",
        "--allow-untrusted",
    ]);
}

fn which(tool: &str) -> Option<std::path::PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

#[test]
fn keys_are_kept_by_capture_id_and_names_ignore_case() {
    let e = Env::new();
    e.keygen();
    random_disk(&e.p("disk.raw"), 4 << 20, 5);
    fs::create_dir_all(e.p("a")).unwrap();
    fs::create_dir_all(e.p("b")).unwrap();
    assert_eq!(
        code(&capture(&e, "disk.raw", "dir:a", "web01", &[])),
        Some(0)
    );
    // The same machine onto a second medium: another capture, its own key.
    assert_eq!(
        code(&capture(&e, "disk.raw", "dir:b", "web01", &[])),
        Some(0)
    );
    let list = e.json(&["keys", "list"]);
    let keys = list["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2, "{list}");
    assert_ne!(keys[0]["capture_id"], keys[1]["capture_id"], "{list}");

    // The first medium's delta still finds its key.
    let mut d = fs::read(e.p("disk.raw")).unwrap();
    d[2 << 20] ^= 0xff;
    fs::write(e.p("disk.raw"), d).unwrap();
    let o = capture(&e, "disk.raw", "dir:a", "web01", &["--delta", "--json"]);
    assert_eq!(code(&o), Some(0), "{}", output_text(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["generation"], 2, "{r}");
    let id_a = r["receipt"]["capture_id"].as_str().unwrap().to_string();

    // Another case of the name is the same capture, and says so.
    let o = capture(&e, "disk.raw", "dir:a", "WEB01", &["--delta"]);
    assert_eq!(code(&o), Some(2), "{}", output_text(&o));
    assert!(
        err(&o).contains("without case") && err(&o).contains("--name web01"),
        "{}",
        output_text(&o)
    );

    // forget: refuses to guess between the two, forgets the one named.
    let o = e.run(&["keys", "forget", "--name", "web01"]);
    assert_eq!(code(&o), Some(2), "{}", output_text(&o));
    let gone = e.json(&["keys", "forget", "--capture-id", &id_a]);
    assert_eq!(gone["forgotten"][0]["capture_id"], id_a.as_str(), "{gone}");
    assert_eq!(gone["forgotten"][0]["names"][0], "web01", "{gone}");
    let list = e.json(&["keys", "list"]);
    assert_eq!(list["keys"].as_array().unwrap().len(), 1, "{list}");
    assert!(
        list["keys"][0]["modified"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{list}"
    );
    let o = capture(&e, "disk.raw", "dir:a", "web01", &["--delta"]);
    assert_eq!(code(&o), Some(2), "{}", output_text(&o));
    assert!(
        err(&o).contains("not in the key cache"),
        "{}",
        output_text(&o)
    );
    // Medium b's key is still there.
    let o = capture(&e, "disk.raw", "dir:b", "web01", &["--delta"]);
    assert_eq!(code(&o), Some(0), "{}", output_text(&o));
}

/// `mgear serve` of web01 on `m.img`, pinning `site.pub`, in the background.
fn serve(e: &Env) -> (Background, String) {
    e.serve("fat:m.img", "web01").trust("site.pub").listen()
}

#[test]
fn guard_rails_refuse_a_second_full_copy_and_a_sync_from_the_wrong_disk() {
    let e = Env::new();
    e.keygen();
    e.ok(&["keygen", "--signing", "--out", "site.key"]);
    let m = e.fat("m.img", "64MiB");
    random_disk(&e.p("disk.raw"), 8 << 20, 6);
    assert_eq!(code(&capture(&e, "disk.raw", &m, "web01", &[])), Some(0));

    // Re-running the finished capture does not store a second copy.
    let before = sha(&e.p("m.img"));
    let o = capture(&e, "disk.raw", &m, "web01", &[]);
    assert_eq!(code(&o), Some(2), "{}", output_text(&o));
    assert!(
        err(&o).contains("already captured as generation 1") && err(&o).contains("--delta"),
        "{}",
        output_text(&o)
    );
    assert_eq!(
        sha(&e.p("m.img")),
        before,
        "a refused re-capture changed the medium"
    );
    // A bare rate stays an error.
    let o = capture(&e, "disk.raw", &m, "db02", &["--rate-limit", "50"]);
    assert_eq!(code(&o), Some(2), "{}", output_text(&o));

    e.ingest(&m, "web01")
        .untrusted()
        .unsealed()
        .target("file:vol.raw")
        .ok();
    // web01 captured again onto a second medium: a second key of that name
    // in the cache; sync picks the one whose capture id the target serves.
    e.fat("second.img", "64MiB");
    assert_eq!(
        code(&capture(&e, "disk.raw", "fat:second.img", "web01", &[])),
        Some(0)
    );
    let vol = fs::read(e.p("vol.raw")).unwrap();
    let (_serve, addr) = serve(&e);

    // The wrong disk (same size): refused before anything is sent.
    random_disk(&e.p("other.raw"), 8 << 20, 7);
    let sync = |src: &str, extra: &[&str]| {
        let mut a = vec![
            "sync",
            "--source",
            src,
            "--to",
            &addr,
            "--name",
            "web01",
            "--sign",
            "site.key",
            "--retries",
            "0",
        ];
        a.extend_from_slice(extra);
        e.run(&a)
    };
    let o = sync("other.raw", &[]);
    assert_eq!(code(&o), Some(1), "{}", output_text(&o));
    assert!(
        err(&o).contains("does not look like the disk captured as web01")
            && !out(&o).contains("verified"),
        "{}",
        output_text(&o)
    );
    assert_eq!(fs::read(e.p("vol.raw")).unwrap(), vol, "the volume changed");

    // The right disk, changed a little: synced and verified.
    let mut d = fs::read(e.p("disk.raw")).unwrap();
    d[5 << 20] ^= 0xff;
    fs::write(e.p("disk.raw"), &d).unwrap();
    let o = sync("disk.raw", &[]);
    assert_eq!(code(&o), Some(0), "{}", output_text(&o));
    assert!(out(&o).contains("chunk ids match"), "{}", output_text(&o));
    assert_eq!(fs::read(e.p("vol.raw")).unwrap(), d);
    // --force takes the operator's word for a rewritten disk.
    let o = sync("other.raw", &["--force"]);
    assert_eq!(code(&o), Some(0), "{}", output_text(&o));
    assert_eq!(
        fs::read(e.p("vol.raw")).unwrap(),
        fs::read(e.p("other.raw")).unwrap()
    );
}

#[test]
fn appliance_commands_report_the_state_they_left() {
    use crate::appliance_util::Lab;
    let mut lab = Lab::new(64);
    lab.start();
    let o = lab.appliance_ok(&["provision", "--pin-file", "pin"]);
    assert!(
        out(&o).contains("appliance state: locked"),
        "{}",
        output_text(&o)
    );
    let o = lab.appliance_ok(&["unlock", "--pin-file", "pin"]);
    assert!(
        out(&o).contains("appliance state: unlocked"),
        "{}",
        output_text(&o)
    );
    let o = lab.appliance_ok(&["lock"]);
    assert!(
        out(&o).contains("appliance state: locked"),
        "{}",
        output_text(&o)
    );
    let o = lab.appliance_ok(&["erase", "--yes", "--pin-file", "pin"]);
    let t = out(&o);
    assert!(t.contains("appliance state: erased"), "{}", output_text(&o));
    assert!(!t.contains("factory reset"), "{t}");
    // Every command the next step names exists.
    let help = out(&lab.run(&["appliance", "--help"]));
    for cmd in ["log", "attestations", "provision"] {
        assert!(help.contains(cmd), "{help}");
    }
    // After an erase, unlock is refused and the true state is named.
    let o = lab.appliance(&["unlock", "--pin-file", "pin"]);
    assert_eq!(code(&o), Some(2), "{}", output_text(&o));
    assert!(!out(&o).contains("unlocked"), "{}", output_text(&o));
    assert!(
        err(&o).contains("the appliance is erased"),
        "{}",
        output_text(&o)
    );
    lab.stop();
}

/// Unmounts when the test ends, however it ends.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_source_mounted_read_write_is_warned_about() {
    let e = Env::new();
    e.keygen();
    let m = e.fat("m.img", "64MiB");
    let img = e.p("ext4.img");
    fs::write(&img, vec![0u8; 8 << 20]).unwrap();
    let mkfs = std::process::Command::new("mkfs.ext4")
        .arg("-q")
        .arg(&img)
        .status();
    fs::create_dir(e.p("mnt")).unwrap();
    // Loop mounts need root and a kernel that allows them (not every CI
    // container does): without them there is nothing to observe.
    let mounted = mkfs.is_ok_and(|s| s.success())
        && std::process::Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(e.p("mnt"))
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipped: cannot loop-mount an ext4 image here");
        return;
    }
    let _guard = Mounted(e.p("mnt"));
    let o = capture(&e, "ext4.img", &m, "e1", &["--dry-run"]);
    assert_eq!(code(&o), Some(0), "{}", output_text(&o));
    assert!(
        out(&o).contains("is mounted read-write at") && out(&o).contains("/mnt"),
        "{}",
        output_text(&o)
    );
    let o = capture(&e, "ext4.img", &m, "e1", &[]);
    assert_eq!(code(&o), Some(0), "{}", output_text(&o));
    assert!(err(&o).contains("warning") && err(&o).contains("mounted read-write"));
    // Said once, before the capture (it was said again after it, in other words).
    assert_eq!(
        err(&o).matches("mounted read-write").count(),
        1,
        "{}",
        err(&o)
    );
}

/// A capture killed half-way (kill -9: the FAT volume stays marked dirty) and resumed by the
/// same command leaves a medium `fsck.fat -n` calls clean: the dirty mark, which fatfs keeps
/// when it finds one at mount, is cleared once the capture finished (it stayed set).
#[test]
fn a_resumed_capture_leaves_the_fat_volume_clean() {
    let e = Env::new();
    e.keygen();
    random_disk(&e.p("disk.raw"), 24 << 20, 7);
    let m = e.fat("m.img", "128MiB");
    let mut child = e
        .capture(&m, "web01")
        .source("disk.raw")
        .args(&["--rate-limit", "8MiB/s", "--checkpoint-bytes", "1MiB"])
        .command()
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    child.kill().unwrap();
    child.wait().unwrap();
    let dirty = std::process::Command::new("fsck.fat")
        .args(["-n", &e.s("m.img")])
        .output()
        .expect("fsck.fat (dosfstools)");
    assert!(
        output_text(&dirty).contains("Dirty bit is set"),
        "the kill left the volume marked: {}",
        output_text(&dirty)
    );
    // Resumed with the source spelled another way (absolute): the same disk, so it resumes.
    let o = capture(&e, &e.s("disk.raw"), &m, "web01", &[]);
    assert_eq!(code(&o), Some(0), "{}", output_text(&o));
    assert!(output_text(&o).contains("resumed"), "{}", output_text(&o));
    let clean = std::process::Command::new("fsck.fat")
        .args(["-n", &e.s("m.img")])
        .output()
        .unwrap();
    assert!(clean.status.success(), "{}", output_text(&clean));
    assert!(
        !output_text(&clean).contains("Dirty bit"),
        "{}",
        output_text(&clean)
    );
}

/// A source whose NBD server stops answering (frozen: SIGSTOP, as a hung
/// hypervisor or storage leaves it) does not hang the capture: the request
/// times out (`MGEAR_NBD_TIMEOUT`, 300 s unless set), the capture stops at
/// its checkpoint saying the server stopped responding (exit 3), and the
/// same command resumes once the server answers again.
#[test]
fn a_frozen_nbd_source_times_out_and_the_capture_resumes() {
    let signal = |sig: &str, pid: u32| {
        let st = std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap();
        assert!(st.success(), "kill {sig}");
    };
    let e = Env::new();
    e.keygen();
    fs::create_dir(e.p("m")).unwrap();
    random_disk(&e.p("disk.raw"), 8 << 20, 11);
    let server =
        mgear_tests::qemu_nbd(&["-r", "-f", "raw", "-t"], &e.p("s.sock"), &e.p("disk.raw"));
    let url = format!("nbd+unix:///?socket={}", e.s("s.sock"));
    let capture = e.capture("dir:m", "web01").source(&url);
    let mut slow = capture
        .clone()
        .args(&["--rate-limit", "2MiB/s", "--checkpoint-bytes", "1MiB"])
        .command();
    let child = slow
        .env("MGEAR_NBD_TIMEOUT", "2")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let pid = server.0.id();
    signal("-STOP", pid);
    let t0 = std::time::Instant::now();
    let o = child.wait_with_output().unwrap();
    let waited = t0.elapsed();
    signal("-CONT", pid);
    let text = output_text(&o);
    assert_eq!(o.status.code(), Some(3), "{text}");
    assert!(
        text.contains("no answer within 2 s") && text.contains("stopped responding"),
        "{text}"
    );
    assert!(
        waited < std::time::Duration::from_secs(60),
        "gave up after {waited:?}"
    );
    capture.ok();
    e.ingest("dir:m", "web01")
        .untrusted()
        .target("file:out.raw")
        .ok();
    assert_eq!(sha(&e.p("out.raw")), sha(&e.p("disk.raw")));
}

/// A capture stopped part-way whose data key was then forgotten (`keys forget`, another
/// host): the resume is refused, and the message names the way that remains, `--abort`,
/// which then works, and the capture runs again from the start.
#[test]
fn a_resume_without_its_key_names_the_abort_that_starts_it_over() {
    let e = Env::new();
    e.keygen();
    random_disk(&e.p("disk.raw"), 6 << 20, 37);
    std::fs::create_dir(e.p("m")).unwrap();
    let line = e.capture("dir:m", "web01").source("disk.raw");
    line.killed_after("2MiB/s", 1200);
    e.ok(&["keys", "forget", "--name", "web01"]);
    let o = line.run();
    assert_eq!(code(&o), Some(2), "{}", output_text(&o));
    assert!(
        err(&o).contains("remove its unfinished generation 1 with `mgear capture --abort --medium dir:m --name web01`"),
        "{}",
        err(&o)
    );
    e.ok(&["capture", "--abort", "--medium", "dir:m", "--name", "web01"]);
    line.ok();
    e.ingest("dir:m", "web01")
        .untrusted()
        .target("file:out.raw")
        .ok();
    assert_eq!(sha(&e.p("out.raw")), sha(&e.p("disk.raw")));
}

/// A source another program holds open for writing (a running VM's disk image) is captured
/// with a warning, as a source mounted read-write is: the capture is a mix of moments. One
/// that grows during the capture is captured at its starting size, and now says so (a disk
/// resized meanwhile shipped without its tail, silently); a shrinking one stops the capture.
#[test]
fn a_source_another_program_writes_or_that_grows_is_warned_about() {
    let e = Env::new();
    e.keygen();
    random_disk(&e.p("disk.raw"), 8 << 20, 41);
    std::fs::create_dir(e.p("m")).unwrap();
    let writer = Background(
        std::process::Command::new("bash")
            .args(["-c", "exec 3<>disk.raw; sleep 60"])
            .current_dir(e.dir.path())
            .spawn()
            .unwrap(),
    );
    // Until bash has opened it (as its fd 3: a count of its descriptors also counted ones
    // it inherited, and the capture then ran before the disk was held).
    let pid = writer.0.id();
    let held = || fs::read_link(format!("/proc/{pid}/fd/3")).is_ok_and(|l| l.ends_with("disk.raw"));
    let started = std::time::Instant::now();
    while !held() && started.elapsed() < std::time::Duration::from_secs(10) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let o = capture(&e, "disk.raw", "dir:m", "web01", &["--json"]);
    assert_eq!(code(&o), Some(0), "{}", output_text(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let w = r["warnings"].to_string();
    assert!(
        w.contains(&format!("disk.raw is open for writing by process {pid}")),
        "{r}"
    );
    drop(writer);
    // Not written by anyone: no such warning.
    let o = capture(&e, "disk.raw", "dir:m", "db02", &["--json"]);
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(r.get("warnings").is_none(), "{r}");
    // A read-write loop device over it, unmounted and held by nobody (it went unsaid); a
    // read-only one is no writer.
    for (name, ro) in [("lo01", false), ("lo02", true)] {
        let lo = match ro {
            false => mgear_tests::Loop::attach(&e.p("disk.raw")),
            true => {
                let out = std::process::Command::new("losetup")
                    .args(["--find", "--show", "--read-only"])
                    .arg(e.p("disk.raw"))
                    .output()
                    .unwrap();
                assert!(out.status.success(), "{}", output_text(&out));
                mgear_tests::Loop(String::from_utf8_lossy(&out.stdout).trim().to_owned())
            }
        };
        let o = capture(&e, "disk.raw", "dir:m", name, &["--json"]);
        assert_eq!(code(&o), Some(0), "{}", output_text(&o));
        let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let said = format!("disk.raw has a read-write loop device over it ({})", lo.0);
        assert_eq!(r["warnings"].to_string().contains(&said), !ro, "{r}");
        drop(lo);
    }

    // Grown by 4 MiB while a capture held to 4 MiB/s reads its 8 MiB.
    let grower = {
        let path = e.p("disk.raw");
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(500));
            let mut f = fs::OpenOptions::new().append(true).open(path).unwrap();
            std::io::Write::write_all(&mut f, &vec![7u8; 4 << 20]).unwrap();
        })
    };
    let o = capture(
        &e,
        "disk.raw",
        "dir:m",
        "app03",
        &["--json", "--rate-limit", "4MiB/s"],
    );
    grower.join().unwrap();
    assert_eq!(code(&o), Some(0), "{}", output_text(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["disk_size"], 8 << 20, "{r}");
    assert!(
        r["warnings"]
            .to_string()
            .contains("grew during the capture, from 8.00 MiB to 12.00 MiB"),
        "{r}"
    );
}

/// A capture made with `--chunk-size 64KiB`: its `--delta` without `--chunk-size` takes the
/// capture's own (it was refused, "give --chunk-size 64KiB", for a default nobody chose);
/// naming another one is still refused.
#[test]
fn a_delta_takes_the_chunk_size_the_capture_was_made_with() {
    let e = Env::new();
    e.keygen();
    random_disk(&e.p("disk.raw"), 4 << 20, 81);
    std::fs::create_dir(e.p("m")).unwrap();
    capture(&e, "disk.raw", "dir:m", "web01", &["--chunk-size", "64KiB"]);
    let mut d = fs::read(e.p("disk.raw")).unwrap();
    d[100] ^= 1;
    fs::write(e.p("disk.raw"), d).unwrap();
    let o = capture(&e, "disk.raw", "dir:m", "web01", &["--delta", "--json"]);
    assert_eq!(code(&o), Some(0), "{}", output_text(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["chunk_size"], 65536, "{r}");
    let o = capture(
        &e,
        "disk.raw",
        "dir:m",
        "web01",
        &["--delta", "--chunk-size", "1MiB"],
    );
    assert_eq!(code(&o), Some(2), "{}", output_text(&o));
}

/// A sparse source: the summary's "read" said the disk's whole size with the holes it did not
/// read beside it ("read 16 MiB, holes skipped 8 MiB" of a 16 MiB disk holding 8). It says what
/// was read; JSON keeps `bytes_read` (the disk covered) and `holes_skipped`.
#[test]
fn the_summary_reads_what_was_read() {
    let e = Env::new();
    e.keygen();
    std::fs::create_dir(e.p("m")).unwrap();
    random_disk(&e.p("disk.raw"), 8 << 20, 61);
    let f = fs::OpenOptions::new()
        .write(true)
        .open(e.p("disk.raw"))
        .unwrap();
    f.set_len(16 << 20).unwrap();
    drop(f);
    let o = capture(&e, "disk.raw", "dir:m", "web01", &[]);
    assert_eq!(code(&o), Some(0), "{}", output_text(&o));
    let text = out(&o);
    let line = |label: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(label))
            .unwrap_or_default()
            .to_string()
    };
    assert!(line("read").contains("(8388608 bytes)"), "{text}");
    assert!(line("holes skipped").contains("(8388608 bytes)"), "{text}");
    let r = capture(&e, "disk.raw", "dir:m", "web02", &["--json"]);
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(v["bytes_read"], 16 << 20, "{v}");
    assert_eq!(v["holes_skipped"], 8 << 20, "{v}");
    // The speed over the disk counts the holes, which cost no read: under a --rate-limit it
    // read as the limit ignored. What was read is given at its own rate beside it.
    let (all, read) = (
        v["mb_per_s"].as_f64().unwrap(),
        v["read_mb_per_s"].as_f64().unwrap(),
    );
    assert!(read > 0.0 && (all / read - 2.0).abs() < 0.01, "{v}");
    assert!(
        line("speed").contains("MB/s over the disk") && line("speed").contains("data read at"),
        "{text}"
    );
}

/// A medium a cut run left mid-write (its dirty mark set, a cluster taken in the first FAT
/// only and held by no file: what a kill between the two FAT copies' write-back leaves) is
/// put right by the next capture before it writes, which says so; `fsck.fat -n` then finds
/// nothing. The resume cleared the dirty mark over such leftovers and the shipment failed
/// `fsck.fat -n`.
#[test]
fn a_capture_onto_a_medium_left_mid_write_puts_it_right_and_says_so() {
    use std::os::unix::fs::FileExt;
    let e = Env::new();
    e.keygen();
    random_disk(&e.p("a.raw"), 3 << 20, 1);
    random_disk(&e.p("b.raw"), 2 << 20, 2);
    let m = e.fat("m.img", "64MiB");
    e.capture(&m, "a").source("a.raw").ok();
    let geo = leave_mid_write(&e.p("m.img"));
    let mut boot = [0u8; 512];
    let o = e.capture(&m, "b").source("b.raw").run();
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    assert!(
        err(&o).contains(
            "mgear: fat:m.img was left mid-write by a run that was cut off (killed, unplugged, \
             or its appliance locked or powered off under it); its file system is put right as \
             `fsck.fat -a` would: 1 cluster no file held, freed\n"
        ),
        "{}",
        output_text(&o)
    );
    mgear_tests::fsck_clean(&e.p("m.img"));
    // A second run finds nothing to put right and says nothing of it.
    let o = e.capture(&m, "c").source("a.raw").run();
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    assert!(!err(&o).contains("mid-write"), "{}", output_text(&o));
    // Left mid-write with damage no cut write leaves (a segment's chain out of the volume
    // within its size): refused, nothing written. It was written over without a word.
    let img = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(e.p("m.img"))
        .unwrap();
    let mut read = |at: u64, buf: &mut [u8]| {
        img.read_exact_at(buf, at)
            .map_err(|e| image_format::StoreError::Io(e.to_string()))
    };
    let seg = image_format::store::fatmap::lookup(&geo, &mut read, "MGEAR/a/G0001/SEG-00000")
        .unwrap()
        .expect("capture a's first segment");
    let first = u64::from(seg.runs[0].cluster);
    for copy in 0..2 {
        img.write_all_at(
            &0x0FFF_FF00u32.to_le_bytes(),
            geo.fat_offset + copy * geo.fat_bytes + first * 4,
        )
        .unwrap();
    }
    img.read_exact_at(&mut boot, 0).unwrap();
    boot[0x41] |= 1;
    img.write_all_at(&boot, 0).unwrap();
    drop(img);
    let before = sha(&e.p("m.img"));
    let o = e.capture(&m, "d").source("b.raw").run();
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    assert!(
        err(&o).contains("MGEAR/a/G0001/SEG-00000: the FAT32 file system is damaged")
            && err(&o).contains("nothing was put right")
            && err(&o).contains("nothing was written"),
        "{}",
        output_text(&o)
    );
    assert_eq!(sha(&e.p("m.img")), before, "the medium is unchanged");
}

/// Marks the FAT medium image `img` as a run cut off mid-write leaves it: its dirty mark set
/// and its last cluster taken in the first FAT only (held by no file). Its geometry.
fn leave_mid_write(img: &Path) -> image_format::store::fatmap::Geometry {
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(img)
        .unwrap();
    let mut boot = [0u8; 512];
    f.read_exact_at(&mut boot, 0).unwrap();
    let geo = image_format::store::fatmap::Geometry::parse(&boot).expect("a FAT32 medium");
    boot[0x41] |= 1;
    f.write_all_at(&boot, 0).unwrap();
    let last = u64::from(geo.cluster_count) + 1;
    f.write_all_at(&0x0FFF_FFFFu32.to_le_bytes(), geo.fat_offset + last * 4)
        .unwrap();
    geo
}

/// A finished capture cut off while it closed leaves the medium mid-write (the FAT copies
/// differ): verify says so instead of calling the medium damaged and advising a `dd` of one
/// FAT over the other; the same capture command again puts it right and is done, exit 0
/// (it was refused as complete, exit 2, and the medium stayed unclean); and `medium fsck
/// --repair` puts it right too (it called the difference damage and repaired nothing).
#[test]
fn a_medium_left_mid_write_by_a_finished_capture_is_put_right_by_the_same_command() {
    let e = Env::new();
    e.keygen();
    random_disk(&e.p("a.raw"), 2 << 20, 3);
    let m = e.fat("m.img", "64MiB");
    let first = e.capture(&m, "a").source("a.raw").ok();
    leave_mid_write(&e.p("m.img"));
    let v = e.run(&["verify", "--medium", &m]);
    assert!(
        output_text(&v).contains("the volume was left mid-write by a run that was cut off")
            && !output_text(&v).contains("dd if="),
        "{}",
        output_text(&v)
    );
    let again = e.capture(&m, "a").source("a.raw").ok();
    assert!(
        err(&again).contains("was already captured: the media its run left mid-write")
            && err(&again).contains("put right, nothing captured again")
            && out(&again).contains("put right, nothing captured again"),
        "{}",
        output_text(&again)
    );
    // The receipt is the first run's.
    let root = |o: &std::process::Output| {
        out(o)
            .lines()
            .find(|l| l.contains("manifest root"))
            .map(str::to_string)
    };
    assert!(
        root(&first).is_some() && root(&first) == root(&again),
        "{}",
        output_text(&again)
    );
    mgear_tests::fsck_clean(&e.p("m.img"));
    // Nothing left to put right: a finished capture again, refused as before.
    let third = e.capture(&m, "a").source("a.raw").run();
    assert_eq!(third.status.code(), Some(2), "{}", output_text(&third));
    leave_mid_write(&e.p("m.img"));
    let r = e.run(&["medium", "fsck", "--medium", &m, "--repair"]);
    assert_eq!(r.status.code(), Some(0), "{}", output_text(&r));
    // Said on stdout as done, not as "no leftovers".
    assert!(
        out(&r).contains("put right") && !out(&r).contains("no leftovers"),
        "{}",
        output_text(&r)
    );
    mgear_tests::fsck_clean(&e.p("m.img"));
}

/// The same for a machine set: its capture re-run after the run that finished it was cut off
/// while it closed the medium puts the medium right and exits 0 (it was refused as "already
/// captured", exit 2, the medium left failing `fsck.fat -n`).
#[test]
fn a_set_left_mid_write_by_the_run_that_finished_it_is_put_right_by_the_same_command() {
    let e = Env::new();
    e.keygen();
    random_disk(&e.p("d0.raw"), 2 << 20, 31);
    random_disk(&e.p("d1.raw"), 1 << 20, 32);
    let m = e.fat("m.img", "64MiB");
    let set = || e.capture(&m, "db01").sources(&["d0.raw", "d1.raw"]);
    set().ok();
    leave_mid_write(&e.p("m.img"));
    let again = set().ok();
    assert!(
        err(&again).contains("set db01 generation 1 was already captured: the media its run left")
            && err(&again).contains("put right, nothing captured again"),
        "{}",
        output_text(&again)
    );
    mgear_tests::fsck_clean(&e.p("m.img"));
    let third = set().run();
    assert_eq!(third.status.code(), Some(2), "{}", output_text(&third));
    let o = e
        .ingest(&m, "db01")
        .untrusted()
        .target("file:d0.out")
        .target("file:d1.out")
        .run();
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    for (a, b) in [("d0.raw", "d0.out"), ("d1.raw", "d1.out")] {
        assert_eq!(fs::read(e.p(a)).unwrap(), fs::read(e.p(b)).unwrap(), "{a}");
    }
}

/// A source written while it is captured by a program that opens it for each write (`dd
/// conv=notrunc`, a cron job), which the check for writers at the start cannot see: the
/// generation mixes moments of the disk, and the capture said nothing. Its modification time
/// moved: said in the warnings (stderr and the report). A source nothing writes says nothing.
#[test]
fn a_source_written_during_the_capture_is_said_to_be() {
    let e = Env::new();
    e.keygen();
    random_disk(&e.p("live.raw"), 6 << 20, 71);
    fs::create_dir(e.p("m")).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, path) = (stop.clone(), e.p("live.raw"));
        std::thread::spawn(move || {
            use std::os::unix::fs::FileExt as _;
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // Opened for each write, as `dd conv=notrunc` does.
                let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
                f.write_all_at(&[n as u8; 4096], (n % 1000) * 4096).unwrap();
                drop(f);
                n += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        })
    };
    // 6 MiB at 3 MiB/s: about two seconds of reading, written all along.
    let r = e
        .capture("dir:m", "live")
        .source("live.raw")
        .args(&["--rate-limit", "3MiB"])
        .json();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    let warnings = r["warnings"].to_string();
    assert!(warnings.contains("was written during the capture"), "{r}");
    // Nothing writes it now: a delta of it says nothing of the kind.
    let r = e
        .capture("dir:m", "live")
        .source("live.raw")
        .arg("--delta")
        .json();
    assert!(
        !r["warnings"].to_string().contains("was written during"),
        "{r}"
    );
}

/// A capture with no passphrase slot whose cached key was forgotten: `keys forget` and the
/// delta refused after it offered `--passphrase-file` (there is no such slot), and neither
/// said that no delta of it can be made any more, nor what to do.
#[test]
fn a_forgotten_key_of_a_capture_without_a_passphrase_slot_says_what_is_left() {
    let e = Env::new();
    e.keygen();
    random_disk(&e.p("d.raw"), 2 << 20, 72);
    fs::create_dir(e.p("m")).unwrap();
    e.capture("dir:m", "solo").source("d.raw").ok();
    let o = e.ok(&["keys", "forget", "--name", "solo"]);
    let said = output_text(&o);
    assert!(
        said.contains("it has no passphrase slot, so nothing opens it here any more")
            && !said.contains("with --passphrase-file"),
        "{said}"
    );
    let o = e
        .capture("dir:m", "solo")
        .source("d.raw")
        .arg("--delta")
        .run();
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    let said = output_text(&o);
    assert!(
        said.contains("the capture has no passphrase slot")
            && said.contains("capture the disk again, in full, under another name"),
        "{said}"
    );
}

/// A segment cut short (or grown) after it was written: `inspect` listed the generation
/// "complete", exit 0, while verify and ingest failed it. Its size is compared with the one
/// its manifest signs: DAMAGED, naming the file and both sizes, exit 1 (human and JSON).
#[test]
fn inspect_names_a_segment_of_another_size_than_its_manifest_says() {
    let e = Env::new();
    e.keygen();
    random_disk(&e.p("d.raw"), 3 << 20, 73);
    fs::create_dir(e.p("m")).unwrap();
    e.capture("dir:m", "w").source("d.raw").ok();
    let seg = e.p("m/MGEAR/w/G0001/SEG-00000");
    let f = fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(1_000_000).unwrap();
    drop(f);
    let o = e.run(&["inspect", "--medium", "dir:m"]);
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    assert!(
        output_text(&o).contains(
            "G0001 DAMAGED: MGEAR/w/G0001/SEG-00000 is 1000000 bytes, but its manifest says"
        ),
        "{}",
        output_text(&o)
    );
    let o = e.run(&["inspect", "--medium", "dir:m", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v["captures"][0]["generations"][0]["state"], "damaged",
        "{v}"
    );
}
