//! Operator mistakes that used to destroy data, found by trying the CLI as a
//! new user would (session 11). Each is now refused (exit 2) before anything
//! is written, and what was there is byte-for-byte unchanged:
//!
//! - a single-disk capture under the name of a machine set (with or without
//!   `--delta`) would begin a generation in the set's directory and wipe its
//!   set manifest and COMMIT;
//! - `ingest --force` with the medium as its target would replace the
//!   shipment with one of its disks; a capture with the medium as its
//!   source would read what it writes; a target among a `dir:` medium's
//!   captures;
//! - one volume given as the target of two disks of a set (however spelled)
//!   kept only the last disk, with exit 0;
//! - an NBD export holding a partition table or a file system was
//!   overwritten without `--force`, where `dev:` refuses;
//! - and a medium cut short exited 1 from ingest ("refused") where verify
//!   said 3 (I/O);
//! - two `mgear serve`s of one volume both ran, and a sync through the
//!   stale one was reported verified;
//! - a device node as a `file:` target with `--force` was replaced by a
//!   regular file, and a mounted `dev:` was written and then overwritten by
//!   the kernel;
//! - a second ingest into a volume another was writing finished it under
//!   the first one's feet;
//! - a capture resumed after its source path came to name another disk of
//!   the same size joined the two disks, and ingest verified the result.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use mgear_tests::{output_text, qemu_nbd, Env, Line, Loop};
use rand::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};

/// Ingest capture `name` from `dir:m` (nothing pinned) into the file `out`, and check that
/// it holds `want`, byte for byte (by SHA-256).
fn ingests_as(e: &Env, name: &str, out: &str, want: &[u8]) {
    e.ingest("dir:m", name)
        .untrusted()
        .target(&format!("file:{out}"))
        .ok();
    assert_eq!(
        Sha256::digest(fs::read(e.p(out)).unwrap()),
        Sha256::digest(want),
        "{name} into {out}"
    );
}

fn random_disk(path: &Path, bytes: usize, seed: u64) {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let mut disk = vec![0u8; bytes];
    rng.fill_bytes(&mut disk);
    fs::write(path, disk).unwrap();
}

/// SHA-256 of every file under `dir` (or of the file `dir`), by path.
fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    if dir.is_file() {
        out.push((
            String::new(),
            Sha256::digest(fs::read(dir).unwrap()).to_vec(),
        ));
        return out;
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().display().to_string();
                out.push((rel, Sha256::digest(fs::read(&p).unwrap()).to_vec()));
            }
        }
    }
    out.sort();
    out
}

fn refused(o: &Output, says: &str) {
    assert_eq!(o.status.code(), Some(2), "{}", output_text(o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(says), "wanted {says:?} in: {}", output_text(o));
}

/// A key cache or a passphrase file on the `dir:` medium the capture writes: the capture's
/// data key (its own file says "never on the medium") and a generated passphrase were written
/// beside the captures they open, exit 0, and verify said OK. Refused now, nothing written,
/// for one disk and for a set.
#[test]
fn secrets_on_the_medium_the_capture_writes_are_refused() {
    let e = Env::new();
    e.keygen();
    random_disk(&e.p("d.raw"), 2 << 20, 5);
    random_disk(&e.p("e.raw"), 2 << 20, 6);
    fs::create_dir(e.p("dm")).unwrap();
    for (args, says) in [
        (
            vec!["--key-cache", "dm/MGEAR"],
            "the key cache dm/MGEAR lies on the medium dir:dm",
        ),
        (
            vec!["--key-cache", "dm/keys"],
            "the key cache dm/keys lies on the medium dir:dm",
        ),
        (
            vec!["--passphrase-file", "dm/pass.txt", "--passphrase-generate"],
            "--passphrase-file dm/pass.txt lies on the medium dir:dm",
        ),
    ] {
        let o = e
            .capture("dir:dm", "web01")
            .source("d.raw")
            .args(&args)
            .run();
        refused(&o, says);
        assert_eq!(
            tree(&e.p("dm")),
            Vec::new(),
            "{args:?} wrote onto the medium"
        );
        let o = e
            .capture("dir:dm", "db01")
            .source("d.raw")
            .source("e.raw")
            .args(&args)
            .run();
        refused(&o, says);
        assert_eq!(
            tree(&e.p("dm")),
            Vec::new(),
            "{args:?} wrote onto the medium"
        );
    }
    // Off the medium, the same capture goes on.
    e.capture("dir:dm", "web01")
        .source("d.raw")
        .args(&["--key-cache", "keys"])
        .ok();
}

#[test]
fn a_single_disk_capture_under_a_sets_name_is_refused_and_the_set_survives() {
    let e = Env::new();
    e.keygen();
    e.ok(&["keygen", "--signing", "--out", "site.key"]);
    random_disk(&e.p("root.raw"), 2 << 20, 1);
    random_disk(&e.p("srv.raw"), 1 << 20, 2);
    random_disk(&e.p("other.raw"), 1 << 20, 3);
    fs::create_dir(e.p("m")).unwrap();
    e.capture("dir:m", "db01")
        .sources(&["root.raw", "srv.raw"])
        .sign("site.key")
        .ok();
    let before = tree(&e.p("m"));

    // The set's name in another case is the same name on the medium.
    for (name, extra) in [
        ("db01", &[][..]),
        ("DB01", &[][..]),
        ("db01", &["--delta"][..]),
    ] {
        let o = e
            .capture("dir:m", name)
            .source("other.raw")
            .sign("site.key")
            .args(extra)
            .run();
        refused(&o, "this medium holds machine set db01");
        assert_eq!(
            tree(&e.p("m")),
            before,
            "a refused capture changed the medium"
        );
    }
    // A disk's name of this set: the set is named, and how to capture it.
    let o = e.capture("dir:m", "db01.d1").source("other.raw").run();
    refused(&o, "db01.d1 is a disk of machine set db01: capture the set");
    // A disk's name of a set the medium does not hold: the ending is
    // reserved, and no set is made up.
    let o = e.capture("dir:m", "x.d0").source("other.raw").run();
    refused(
        &o,
        "x.d0 ends in .dK, which is reserved for the disks of a machine set",
    );
    // Its --dry-run refuses it the same (it used to plan it as "fits").
    let dry = e
        .capture("dir:m", "x.d0")
        .source("other.raw")
        .arg("--dry-run")
        .run();
    refused(
        &dry,
        "x.d0 ends in .dK, which is reserved for the disks of a machine set",
    );
    assert!(
        !String::from_utf8_lossy(&o.stderr).contains("machine set x:"),
        "{}",
        output_text(&o)
    );
    assert_eq!(
        tree(&e.p("m")),
        before,
        "a refused capture changed the medium"
    );
    // --dry-run says the same, before the real run would.
    let o = e
        .capture("dir:m", "db01")
        .source("other.raw")
        .arg("--dry-run")
        .run();
    refused(&o, "machine set db01");

    // The set still verifies and ingests bit for bit.
    e.ok(&["verify", "--medium", "dir:m"]);
    e.ingest("dir:m", "db01")
        .trust("site.pub")
        .target("file:db01-{disk}.raw")
        .ok();
    assert_eq!(
        fs::read(e.p("db01-0.raw")).unwrap(),
        fs::read(e.p("root.raw")).unwrap()
    );
    assert_eq!(
        fs::read(e.p("db01-1.raw")).unwrap(),
        fs::read(e.p("srv.raw")).unwrap()
    );
}

/// Another medium (a copy of the shipment, another shipment's) given as the ingest target:
/// "exists: pass --force" did not say that --force overwrites its captures. Said now, with
/// the captures it holds, nothing written.
#[test]
fn another_medium_as_the_ingest_target_is_named_as_one() {
    let e = Env::new();
    e.keygen();
    random_disk(&e.p("d.raw"), 2 << 20, 7);
    let m = e.fat("m.img", "64MiB");
    e.capture(&m, "web01").source("d.raw").ok();
    let other = e.fat("other.img", "64MiB");
    e.capture(&other, "db01").source("d.raw").ok();
    let before = fs::read(e.p("other.img")).unwrap();
    let o = e
        .ingest(&m, "web01")
        .untrusted()
        .target("file:other.img")
        .run();
    refused(
        &o,
        "other.img is a medium with MotionGear capture db01: --force would",
    );
    assert!(
        fs::read(e.p("other.img")).unwrap() == before,
        "the medium was changed"
    );
    // A device holding another medium, written with --force: said before it goes (it went
    // without a word, where `medium format --force` names what it wipes).
    let dev = Loop::attach(&e.p("other.img"));
    let o = e
        .ingest(&m, "web01")
        .untrusted()
        .target(&format!("dev:{}", dev.0))
        .arg("--force")
        .run();
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("holds a medium with MotionGear capture db01: --force writes"),
        "{}",
        output_text(&o)
    );
}

#[test]
fn the_medium_is_never_its_own_target_or_source() {
    let e = Env::new();
    e.keygen();
    random_disk(&e.p("d.raw"), 2 << 20, 4);
    let m = e.fat("medium.img", "40MiB");
    e.capture(&m, "web01").source("d.raw").ok();
    let before = tree(&e.p("medium.img"));

    // The FAT image as the target, however it is spelled, even with --force.
    fs::create_dir(e.p("sub")).unwrap();
    std::os::unix::fs::symlink(e.p("medium.img"), e.p("link.img")).unwrap();
    for target in [
        "file:medium.img".to_string(),
        format!("file:{}", e.s("sub/../medium.img")),
        "qcow2:link.img".to_string(),
    ] {
        let o = e
            .ingest(&m, "web01")
            .untrusted()
            .target(&target)
            .arg("--force")
            .run();
        refused(&o, "ingest would overwrite the shipment it reads");
        assert_eq!(
            tree(&e.p("medium.img")),
            before,
            "{target} changed the medium"
        );
    }
    // The medium as the source of a capture onto itself.
    let o = e.capture(&m, "self").source("medium.img").run();
    refused(&o, "capture would read the medium it writes");
    assert_eq!(tree(&e.p("medium.img")), before);
    // ... and served over NBD (QEMU's locking off, or the capture is refused as the medium
    // being held): it was captured onto itself, and verified.
    let sock = e.p("m.sock");
    let server = std::process::Command::new("qemu-nbd")
        .args(["-t", "-r", "--image-opts", "-k"])
        .arg(&sock)
        .arg(format!(
            "driver=raw,file.driver=file,file.filename={},file.locking=off",
            e.s("medium.img")
        ))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map(mgear_tests::Background)
        .expect("qemu-nbd (Debian: qemu-utils)");
    let t0 = std::time::Instant::now();
    while !sock.exists() && t0.elapsed() < std::time::Duration::from_secs(20) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let o = e
        .capture(&m, "self")
        .source(&format!("nbd+unix:///?socket={}", sock.display()))
        .run();
    refused(&o, "(an NBD export of");
    assert!(
        output_text(&o).contains("capture would read the medium it writes"),
        "{}",
        output_text(&o)
    );
    drop(server);
    assert_eq!(tree(&e.p("medium.img")), before);
    // The medium given as an NBD export: the same export as --source, or the image it
    // serves (both were captured onto themselves, exit 0).
    let msock = e.p("mrw.sock");
    let medium_server = qemu_nbd(&["-t", "-e", "4", "-f", "raw"], &msock, &e.p("medium.img"));
    let murl = format!("nbd+unix:///?socket={}", msock.display());
    for source in [murl.clone(), e.s("medium.img")] {
        let o = e.capture(&murl, "self").source(&source).run();
        refused(&o, "capture would read the medium it writes");
    }
    // ... and the image it serves as an ingest's target, --force too: it was replaced by the
    // decrypted disk, exit 0, and the shipment was gone.
    for target in ["file:medium.img", "qcow2:medium.img"] {
        let o = e
            .ingest(&murl, "web01")
            .untrusted()
            .target(target)
            .arg("--force")
            .run();
        refused(
            &o,
            "holds a FAT file system, and the medium is read over NBD",
        );
    }
    drop(medium_server);
    assert_eq!(tree(&e.p("medium.img")), before);

    // A dir: medium: a target among its captures is refused, and so is one beside them
    // (the mount point's top): the decrypted disk was written onto the medium, exit 0.
    fs::create_dir(e.p("dm")).unwrap();
    e.capture("dir:dm", "web01").source("d.raw").ok();
    let before = tree(&e.p("dm"));
    let seg = fs::read_dir(e.p("dm/MGEAR/web01/G0001"))
        .unwrap()
        .map(|f| f.unwrap().path())
        .find(|p| p.is_file())
        .unwrap();
    for target in [
        format!("file:{}", seg.display()),
        "file:dm/MGEAR/new.raw".into(),
    ] {
        let o = e
            .ingest("dir:dm", "web01")
            .untrusted()
            .target(&target)
            .arg("--force")
            .run();
        refused(&o, "is the medium dir:dm, or lies on it");
        assert_eq!(tree(&e.p("dm")), before, "{target} changed the medium");
    }
    let o = e
        .ingest("dir:dm", "web01")
        .untrusted()
        .target("file:dm/web01.raw")
        .run();
    refused(
        &o,
        "lies in the directory of the medium dir:dm: the decrypted disk would be written onto \
         the medium",
    );
    assert_eq!(tree(&e.p("dm")), before);
    // The resume state's directory there (of a single disk and of a set): it wrote a
    // "capture" into MGEAR/ that verify then failed on, even when the ingest was refused.
    for (state, says) in [
        ("dm/MGEAR/newcap", "is the medium dir:dm, or lies on it"),
        ("dm/state", "lies in the directory of the medium dir:dm"),
        // Levels that do not exist yet (only one was looked past).
        ("dm/sub/deep", "lies in the directory of the medium dir:dm"),
        ("dm/MGEAR/a/b/c", "is the medium dir:dm, or lies on it"),
    ] {
        for targets in [&["file:web01.raw"][..], &["file:a.raw", "file:b.raw"][..]] {
            let mut i = e.ingest("dir:dm", "web01").untrusted();
            for t in targets {
                i = i.target(t);
            }
            let o = i.args(&["--state-dir", state]).run();
            refused(&o, says);
            assert_eq!(
                tree(&e.p("dm")),
                before,
                "--state-dir {state} changed the medium"
            );
        }
    }
    e.ingest("dir:dm", "web01")
        .untrusted()
        .target("file:web01.raw")
        .ok();
    assert_eq!(
        fs::read(e.p("web01.raw")).unwrap(),
        fs::read(e.p("d.raw")).unwrap()
    );

    // A directory as a file target is refused before the ingest, not at its rename.
    let o = e
        .ingest(&m, "web01")
        .untrusted()
        .target("file:sub")
        .arg("--force")
        .run();
    refused(&o, "is a directory");
    assert!(!e.p("sub.partial").exists());
    // A file or qcow2 target in a directory that does not exist is said by that directory,
    // not by the `.partial` file whose creation failed (exit 3, "reconnect it").
    for t in ["file:nodir/x.raw", "qcow2:nodir/x.qcow2"] {
        let o = e.ingest(&m, "web01").untrusted().target(t).run();
        refused(
            &o,
            "the directory nodir does not exist: create it (`mkdir -p -- nodir`)",
        );
        assert!(!e.p("nodir").exists());
    }
    // Quoted as a shell needs it (`mkdir -p new dir`, pasted, made two directories).
    let o = e
        .ingest(&m, "web01")
        .untrusted()
        .target("file:new dir/x y.raw")
        .run();
    refused(&o, "create it (`mkdir -p -- 'new dir'`)");

    // The report where the volume goes (its .txt summary too), and a volume over the identity
    // the run reads: each replaced the other (the report the verified disk, exit 0).
    let key = fs::read(e.p("target.key")).unwrap();
    for (target, report) in [
        ("file:v.raw", "v.raw"),
        ("file:v.txt", "v.json"),
        ("file:v.raw", "v.raw.partial"),
    ] {
        let o = e
            .ingest(&m, "web01")
            .untrusted()
            .target(target)
            .args(&["--report", report])
            .run();
        refused(&o, "the report would replace the disk just verified");
        assert!(!e.p("v.raw").exists() && !e.p("v.txt").exists());
    }
    let o = e
        .ingest(&m, "web01")
        .untrusted()
        .target("file:target.key")
        .arg("--force")
        .run();
    refused(&o, "is the --identity file");
    assert_eq!(fs::read(e.p("target.key")).unwrap(), key);
    // A directory given as the input file holds the volume's path, and was "the --trust file
    // sub": it is an input that cannot be read.
    fs::create_dir(e.p("insub")).unwrap();
    let o = e
        .ingest(&m, "web01")
        .untrusted()
        .args(&["--trust", "insub"])
        .target("file:insub/v.raw")
        .run();
    refused(
        &o,
        "cannot read public key insub: it is a directory, not a file",
    );
}

/// A capture of `src.raw` onto `m` as `name`, held to 4 MiB/s so that it is still running
/// (or can be killed mid-write) a few seconds on.
fn slow_capture(e: &Env, m: &str, name: &str) -> std::process::Child {
    e.cmd(&[
        "capture",
        "--source",
        "src.raw",
        "--medium",
        m,
        "--name",
        name,
        "--recipient",
        "target.pub",
        "--rate-limit",
        "4MiB/s",
    ])
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap()
}

/// A removal refused (a mistyped name) on a medium a killed capture left mid-write changes
/// nothing: the open for writing put the medium right first (its dirty mark, its free count),
/// and the refusal said nothing of it.
#[test]
fn a_refused_removal_leaves_a_medium_left_mid_write_as_it_was() {
    let e = Env::new();
    e.keygen();
    random_disk(&e.p("src.raw"), 24 << 20, 43);
    let m = e.fat("m.img", "64MiB");
    let mut capture = slow_capture(&e, &m, "big");
    std::thread::sleep(std::time::Duration::from_millis(2500));
    capture.kill().unwrap();
    capture.wait().unwrap();
    let before = fs::read(e.p("m.img")).unwrap();
    // Left mid-write: its dirty mark is set (what the refusals below must leave).
    assert_eq!(
        before[0x41] & 1,
        1,
        "the killed capture left the medium closed"
    );
    for args in [
        &["medium", "rm", "--medium", &m, "--name", "typo"][..],
        &["capture", "--abort", "--medium", &m, "--name", "typo"],
    ] {
        let o = e.run(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", output_text(&o));
        assert!(
            fs::read(e.p("m.img")).unwrap() == before,
            "{args:?} changed the medium"
        );
        // It says the medium was left mid-write and what puts it right (a removal cut at its
        // end, re-run, said only "no such generation" and left it so).
        assert!(
            output_text(&o).contains("was left mid-write by a run that was cut off")
                && output_text(&o).contains("mgear medium fsck --repair"),
            "{args:?}: {}",
            output_text(&o)
        );
    }
}

/// `medium format --force` of the disk a running capture reads: refused as in use (it
/// formatted it, and the capture finished, exit 0, holding a disk of zeros and a FAT).
#[test]
fn the_source_of_a_running_capture_is_not_formatted() {
    let e = Env::new();
    e.keygen();
    // Large enough to hold a FAT32 medium: a smaller one is refused by its size first.
    random_disk(&e.p("src.raw"), 40 << 20, 41);
    let before = fs::read(e.p("src.raw")).unwrap();
    let m = e.fat("m.img", "64MiB");
    let capture = mgear_tests::Background(slow_capture(&e, &m, "sx"));
    // Reading by now: its first chunks are on the medium.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let o = e.run(&["medium", "format", "fat:src.raw", "--force"]);
    assert_eq!(o.status.code(), Some(3), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("is in use by pid"),
        "{}",
        output_text(&o)
    );
    drop(capture);
    assert!(
        fs::read(e.p("src.raw")).unwrap() == before,
        "the source was formatted"
    );
}

#[test]
fn two_disks_of_a_set_into_one_volume_are_refused_before_writing() {
    let e = Env::new();
    e.keygen();
    random_disk(&e.p("a.raw"), 1 << 20, 5);
    random_disk(&e.p("b.raw"), 1 << 20, 6);
    fs::create_dir(e.p("m")).unwrap();
    e.capture("dir:m", "m1").sources(&["a.raw", "b.raw"]).ok();
    let same = e.s("same.raw");
    for force in [false, true] {
        let o = e
            .ingest("dir:m", "m1")
            .untrusted()
            .target("file:same.raw")
            .target(&format!("file:{same}"))
            .args(if force { &["--force"][..] } else { &[][..] })
            .run();
        refused(&o, "disks 0 and 1 have the same target");
        assert!(!e.p("same.raw").exists() && !e.p("same.raw.partial").exists());
    }
}

#[test]
fn an_nbd_export_that_holds_a_disk_needs_force() {
    let e = Env::new();
    e.keygen();
    random_disk(&e.p("d.raw"), 2 << 20, 7);
    fs::create_dir(e.p("m")).unwrap();
    e.capture("dir:m", "web01").source("d.raw").ok();
    // A volume with an MBR partition table: a disk someone still needs.
    let mut vol = vec![0u8; 4 << 20];
    vol[446 + 4] = 0x83;
    vol[510..512].copy_from_slice(&[0x55, 0xaa]);
    fs::write(e.p("vol.raw"), &vol).unwrap();
    let sock = e.p("v.sock");
    let _server = qemu_nbd(&["-t", "-f", "raw"], &sock, &e.p("vol.raw"));
    let url = format!("nbd+unix:///?socket={}", sock.display());

    let o = e.ingest("dir:m", "web01").untrusted().target(&url).run();
    refused(&o, "holds an MBR partition table: ingest would destroy it");
    assert_eq!(
        fs::read(e.p("vol.raw")).unwrap(),
        vol,
        "a refused export was written"
    );

    e.ingest("dir:m", "web01")
        .untrusted()
        .target(&url)
        .arg("--force")
        .ok();
    let got = fs::read(e.p("vol.raw")).unwrap();
    assert_eq!(&got[..2 << 20], &fs::read(e.p("d.raw")).unwrap()[..]);
}

/// The exit code says which it is, for ingest as for verify: a medium that
/// cannot be read (cut short) is an I/O error, 3; a damaged file a finding, 1.
#[test]
fn a_medium_cut_short_is_an_io_error_and_a_damaged_one_a_finding() {
    let e = Env::new();
    e.keygen();
    random_disk(&e.p("d.raw"), 2 << 20, 8);
    let m = e.fat("t.img", "40MiB");
    e.capture(&m, "web01").source("d.raw").ok();
    let f = fs::OpenOptions::new()
        .write(true)
        .open(e.p("t.img"))
        .unwrap();
    f.set_len(1 << 20).unwrap();
    let verify = e.run(&["verify", "--medium", &m]);
    assert_eq!(verify.status.code(), Some(3), "{}", output_text(&verify));
    let ingest = e.ingest(&m, "web01").untrusted().target("file:o.raw").run();
    assert_eq!(ingest.status.code(), Some(3), "{}", output_text(&ingest));

    fs::create_dir(e.p("dm")).unwrap();
    e.capture("dir:dm", "web01").source("d.raw").ok();
    let manifest = e.p("dm/MGEAR/web01/G0001/MANIFEST");
    let mut bytes = fs::read(&manifest).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    fs::write(&manifest, bytes).unwrap();
    let verify = e.run(&["verify", "--medium", "dir:dm"]);
    assert_eq!(verify.status.code(), Some(1), "{}", output_text(&verify));
    let ingest = e
        .ingest("dir:dm", "web01")
        .untrusted()
        .target("file:o.raw")
        .run();
    assert_eq!(ingest.status.code(), Some(1), "{}", output_text(&ingest));
}

/// A second `mgear serve` of one volume would answer syncs from its own view
/// of it, hashed at its start, and call a stale volume verified: refused
/// while the first serves, naming it.
#[test]
fn one_serve_per_volume() {
    let e = Env::new();
    e.keygen();
    random_disk(&e.p("d.raw"), 2 << 20, 9);
    fs::create_dir(e.p("m")).unwrap();
    e.capture("dir:m", "web01").source("d.raw").ok();
    e.ingest("dir:m", "web01")
        .untrusted()
        .target("file:vol.raw")
        .ok();
    let (_first, addr) = e.serve("dir:m", "web01").untrusted().listen();
    // Spawned with a deadline: a second serve that is not refused serves on.
    let mut second = e
        .serve("dir:m", "web01")
        .untrusted()
        .command()
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while second.try_wait().unwrap().is_none() {
        if start.elapsed() > std::time::Duration::from_secs(60) {
            let _ = second.kill();
            panic!("a second serve of vol.raw was not refused");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let o = second.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", output_text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("target file:vol.raw is in use by pid") && err.contains("one serve writes"),
        "{}",
        output_text(&o)
    );
    // Nor does an ingest replace the volume under the serve (it renamed a new file over it,
    // and the serve's later syncs went into the deleted one, "verified").
    let before = fs::metadata(e.p("vol.raw")).unwrap();
    let o = e
        .ingest("dir:m", "web01")
        .untrusted()
        .target("file:vol.raw")
        .arg("--force")
        .run();
    assert_eq!(o.status.code(), Some(3), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("a `mgear serve` keeping it for syncs"),
        "{}",
        output_text(&o)
    );
    use std::os::unix::fs::MetadataExt;
    assert_eq!(fs::metadata(e.p("vol.raw")).unwrap().ino(), before.ino());
    // Nor does a guest booted to write it (refused before QEMU starts).
    let o = e.run(&[
        "boot",
        "--target",
        "file:vol.raw",
        "--write",
        "--timeout",
        "5",
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("a `mgear serve` keeping it for syncs"),
        "{}",
        output_text(&o)
    );
    // Another file put at its path by hand: the serve applies nothing more (its syncs would
    // land in the old, deleted file) and says why.
    fs::copy(e.p("vol.raw"), e.p("copy.raw")).unwrap();
    fs::rename(e.p("copy.raw"), e.p("vol.raw")).unwrap();
    let mut d = fs::read(e.p("d.raw")).unwrap();
    d[1 << 20] ^= 0xff;
    fs::write(e.p("d.raw"), d).unwrap();
    let o = e.run(&[
        "sync", "--source", "d.raw", "--to", &addr, "--name", "web01",
    ]);
    assert_ne!(o.status.code(), Some(0), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("was replaced by another file"),
        "{}",
        output_text(&o)
    );
}

/// A device node is never a `file:`/`qcow2:` target (`--force` replaced the
/// node with a regular file and the disk got nothing), and a mounted device
/// is never a `dev:` target (the kernel wrote its metadata over the volume).
#[test]
fn a_device_is_written_only_as_dev_and_only_when_nothing_holds_it() {
    use std::os::unix::fs::FileTypeExt;
    let e = Env::new();
    e.keygen();
    random_disk(&e.p("d.raw"), 2 << 20, 10);
    fs::create_dir(e.p("m")).unwrap();
    e.capture("dir:m", "web01").source("d.raw").ok();
    fs::write(e.p("back.img"), vec![0u8; 8 << 20]).unwrap();
    let dev = Loop::attach(&e.p("back.img"));
    for kind in ["file", "qcow2"] {
        let o = e
            .ingest("dir:m", "web01")
            .untrusted()
            .target(&format!("{kind}:{}", dev.0))
            .arg("--force")
            .run();
        refused(&o, "is a block device, not a file");
        assert!(output_text(&o).contains(&format!("give dev:{}", dev.0)));
        let t = fs::metadata(&dev.0).unwrap().file_type();
        assert!(t.is_block_device(), "{kind}: the device node was replaced");
        assert!(!Path::new(&format!("{}.partial", dev.0)).exists());
    }
    // A character device is no disk at all: not pointed at dev: (which refuses it too).
    let o = e
        .ingest("dir:m", "web01")
        .untrusted()
        .target("file:/dev/null")
        .arg("--force")
        .run();
    refused(&o, "is a character device, not a file");
    assert!(
        !output_text(&o).contains("dev:/dev/null"),
        "{}",
        output_text(&o)
    );
    // Mounted: refused even with --force, the file system intact.
    let st = std::process::Command::new("mkfs.ext4")
        .args(["-q", &dev.0])
        .status()
        .expect("mkfs.ext4 (Debian: e2fsprogs)");
    assert!(st.success());
    fs::create_dir(e.p("mnt")).unwrap();
    let st = std::process::Command::new("mount")
        .arg(&dev.0)
        .arg(e.p("mnt"))
        .status()
        .unwrap();
    assert!(st.success());
    let o = e
        .ingest("dir:m", "web01")
        .untrusted()
        .target(&format!("dev:{}", dev.0))
        .arg("--force")
        .run();
    refused(&o, "is in use (mounted");
    let st = std::process::Command::new("umount")
        .arg(e.p("mnt"))
        .status()
        .unwrap();
    assert!(st.success());
    let fsck = std::process::Command::new("fsck.ext4")
        .args(["-n", &dev.0])
        .output()
        .unwrap();
    assert!(fsck.status.success(), "{}", output_text(&fsck));
    // Unmounted, with --force: written and verified.
    e.ingest("dir:m", "web01")
        .untrusted()
        .target(&format!("dev:{}", dev.0))
        .arg("--force")
        .ok();
    let got = fs::read(e.p("back.img")).unwrap();
    assert_eq!(&got[..2 << 20], &fs::read(e.p("d.raw")).unwrap()[..]);
}

/// What the operator gave wrong is exit 2, never "the data did not check
/// out": a missing `--attestations` directory (verify and ingest called a
/// signed, pinned capture untrusted, exit 1) and a `--generation` the
/// capture does not have (keyless verify ignored it and said OK).
#[test]
fn a_wrong_trust_file_or_generation_is_a_usage_error_not_a_finding() {
    let e = Env::new();
    e.keygen();
    e.ok(&["keygen", "--signing", "--out", "site.key"]);
    random_disk(&e.p("d.raw"), 2 << 20, 11);
    fs::create_dir(e.p("m")).unwrap();
    e.capture("dir:m", "web01")
        .source("d.raw")
        .sign("site.key")
        .ok();
    let o = e.run(&[
        "verify",
        "--medium",
        "dir:m",
        "--trust",
        "site.pub",
        "--attestations",
        "no-such-dir",
    ]);
    refused(&o, "--attestations: cannot open");
    let o = e
        .ingest("dir:m", "web01")
        .trust("site.pub")
        .args(&["--attestations", "no-such-dir", "--allow-unsealed"])
        .target("file:o.raw")
        .run();
    refused(&o, "--attestations: cannot open");
    assert!(!e.p("o.raw").exists());

    for extra in [&[][..], &["--trust", "site.pub"][..]] {
        let mut args = vec![
            "verify",
            "--medium",
            "dir:m",
            "--name",
            "web01",
            "--generation",
            "5",
        ];
        args.extend_from_slice(extra);
        let o = e.run(&args);
        refused(
            &o,
            "capture web01 has no generation 5 on this medium; its generations: 1",
        );
    }
}

/// A second ingest into a volume another ingest is writing adopted its
/// unfinished volume and renamed it into place under its feet: refused,
/// naming the first, however the target is spelled.
#[test]
fn one_ingest_per_volume() {
    let e = Env::new();
    e.keygen();
    random_disk(&e.p("d.raw"), 8 << 20, 12);
    fs::create_dir(e.p("m")).unwrap();
    e.capture("dir:m", "web01").source("d.raw").ok();
    let first = e
        .ingest("dir:m", "web01")
        .untrusted()
        .target("file:t.raw")
        .args(&["--rate-limit", "1MiB/s", "--checkpoint-bytes", "1MiB"]);
    let mut child = first
        .command()
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while !e.p("t.raw.partial").exists() {
        assert!(
            start.elapsed().as_secs() < 30,
            "the first ingest did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let o = e
        .ingest("dir:m", "web01")
        .untrusted()
        .target(&format!("file:{}", e.s("t.raw")))
        .run();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(o.status.code(), Some(3), "{}", output_text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("is in use by pid"),
        "{}",
        output_text(&o)
    );
    // The first, killed, resumes with the same command and finishes whole.
    e.ingest("dir:m", "web01")
        .untrusted()
        .target("file:t.raw")
        .ok();
    assert_eq!(
        fs::read(e.p("t.raw")).unwrap(),
        fs::read(e.p("d.raw")).unwrap()
    );
}

/// `capture --abort` removed a finished generation whose MANIFEST was lost
/// (deleted, or a flipped byte) while a delta depended on it, with exit 0:
/// the delta became unreadable. Abort now removes only the newest generation
/// and only one that never finished; verify and fsck call such a generation
/// damaged, and neither advises removing it.
#[test]
fn abort_never_removes_a_generation_a_delta_builds_on() {
    let e = Env::new();
    e.keygen();
    random_disk(&e.p("d.raw"), 3 << 20, 21);
    fs::create_dir(e.p("med")).unwrap();
    e.capture("dir:med", "a").source("d.raw").ok();
    let mut disk = fs::read(e.p("d.raw")).unwrap();
    disk[(2 << 20) + 5] ^= 0xff;
    fs::write(e.p("d.raw"), &disk).unwrap();
    e.capture("dir:med", "a")
        .source("d.raw")
        .arg("--delta")
        .ok();
    for damage in ["remove", "flip"] {
        let manifest = e.p("med/MGEAR/a/G0001/MANIFEST");
        let saved = fs::read(&manifest).unwrap();
        if damage == "remove" {
            fs::remove_file(&manifest).unwrap();
        } else {
            let mut b = saved.clone();
            let at = b.len() / 2;
            b[at] ^= 0x40;
            fs::write(&manifest, b).unwrap();
        }
        let before = tree(&e.p("med"));
        let abort = e.run(&["capture", "--abort", "--medium", "dir:med", "--name", "a"]);
        assert_eq!(
            abort.status.code(),
            Some(2),
            "{damage}: {}",
            output_text(&abort)
        );
        let text = output_text(&abort);
        assert!(
            text.contains("generation 2 is finished"),
            "{damage}: {text}"
        );
        assert_eq!(
            tree(&e.p("med")),
            before,
            "{damage}: abort changed the medium"
        );
        let verify = e.run(&["verify", "--medium", "dir:med"]);
        let text = output_text(&verify);
        assert!(!text.contains("capture --abort"), "{damage}: {text}");
        let fsck = e.run(&["medium", "fsck", "--medium", "dir:med", "--repair"]);
        let text = output_text(&fsck);
        assert!(!text.contains("capture --abort"), "{damage}: {text}");
        assert!(
            e.p("med/MGEAR/a/G0001").exists(),
            "{damage}: fsck removed it"
        );
        fs::write(&manifest, saved).unwrap();
    }
    // With G0001 whole again, the delta still reads back.
    e.ingest("dir:med", "a")
        .untrusted()
        .target("file:out.raw")
        .ok();
    assert_eq!(fs::read(e.p("out.raw")).unwrap(), disk);
    // Removed by hand, the delta's ingest names the missing parent.
    fs::remove_dir_all(e.p("med/MGEAR/a/G0001")).unwrap();
    let ingest = e
        .ingest("dir:med", "a")
        .untrusted()
        .target("file:o2.raw")
        .run();
    let text = output_text(&ingest);
    assert!(text.contains("parent generation 1 is missing"), "{text}");
    // Before anything is written (a .partial and a resume state were left to give up by hand),
    // and the advice is the delta's own generation from a copy that holds its parent.
    assert_eq!(ingest.status.code(), Some(1), "{text}");
    assert!(
        text.contains(
            "ingest generation 2 from a copy of the shipment that also holds generation 1"
        ),
        "{text}"
    );
    assert!(!e.p("o2.raw.partial").exists());
    assert!(!e.p("o2.raw").exists());
}

/// A first capture killed at its very start (between creating its directory
/// on the medium and writing the key cache) left a medium the same command
/// refused ("its data key is not in the key cache"), and `capture --abort`
/// pointed at `medium rm --generation 0`, which failed. The README promises
/// "run the same command again".
#[test]
fn a_first_capture_killed_at_its_start_runs_again() {
    let e = Env::new();
    e.keygen();
    random_disk(&e.p("d.raw"), 3 << 20, 22);
    let strace = std::process::Command::new("strace").arg("-V").output();
    assert!(
        strace.is_ok_and(|o| o.status.success()),
        "strace (./test.sh installs it)"
    );
    for when in 1..=8 {
        let m = format!("m{when}");
        fs::create_dir(e.p(&m)).unwrap();
        let medium = format!("dir:{m}");
        let line = e.capture(&medium, "b").source("d.raw");
        let mut killed = std::process::Command::new("strace");
        killed
            .args([
                "-f",
                "-qq",
                "-o",
                "/dev/null",
                "-e",
                "trace=fsync,fdatasync",
            ])
            .arg("-e")
            .arg(format!("inject=fsync,fdatasync:signal=KILL:when={when}"))
            .arg(mgear_tests::bin("mgear"))
            .args(line.argv())
            .current_dir(e.dir.path())
            .env("XDG_STATE_HOME", e.p("state"))
            .stdin(std::process::Stdio::null());
        let _ = killed.output().unwrap();
        // The same command again finishes it, whatever the kill left.
        line.ok();
        e.ingest(&medium, "b")
            .untrusted()
            .target(&format!("file:{m}.raw"))
            .ok();
        assert_eq!(
            fs::read(e.p(&format!("{m}.raw"))).unwrap(),
            fs::read(e.p("d.raw")).unwrap(),
            "kill at sync {when}"
        );
    }
    let keys = e.p("state/mgear/keys");
    for f in fs::read_dir(&keys).unwrap() {
        let f = f.unwrap().file_name().to_string_lossy().to_string();
        assert!(!f.ends_with(".new"), "left in the key cache: {f}");
    }
    // A capture directory with nothing in it yet: abort removes it.
    fs::create_dir_all(e.p("m0/MGEAR/b")).unwrap();
    let abort = e.ok(&["capture", "--abort", "--medium", "dir:m0", "--name", "b"]);
    assert!(
        output_text(&abort).contains("removed its capture directory"),
        "{}",
        output_text(&abort)
    );
    assert!(!e.p("m0/MGEAR/b").exists());
}

/// `--delta` of a name the medium does not hold was refused only after a key had been cached
/// and the capture's directory made: every try left both (an orphan `medium fsck` reported,
/// one more key per try). Now it is refused before anything is written anywhere.
#[test]
fn a_delta_of_a_name_never_captured_leaves_nothing() {
    let e = Env::new();
    e.keygen();
    random_disk(&e.p("a.raw"), 4 << 20, 5);
    e.fat("medium.img", "40MiB");
    for _ in 0..2 {
        let o = e
            .capture("fat:medium.img", "web01")
            .source("a.raw")
            .arg("--delta")
            .run();
        assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
        assert!(
            output_text(&o).contains("no capture web01 on this medium for --delta"),
            "{}",
            output_text(&o)
        );
    }
    // --replace-medium implies a delta, but it was told as "for --delta", which was not given.
    e.fat("spare.img", "40MiB");
    let o = e
        .capture("fat:medium.img", "web01")
        .source("a.raw")
        .args(&["--replace-medium", "fat:spare.img"])
        .run();
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(
        output_text(&o)
            .contains("no capture web01 on the media given for --replace-medium to go on with")
            && !output_text(&o).contains("--delta"),
        "{}",
        output_text(&o)
    );
    let i = e.json(&["inspect", "--medium", "fat:medium.img"]);
    assert_eq!(i["captures"].as_array().map(Vec::len), Some(0), "{i}");
    let k = e.json(&["keys", "list"]);
    assert_eq!(k["keys"].as_array().map(Vec::len), Some(0), "{k}");
    e.ok(&["medium", "fsck", "--medium", "fat:medium.img"]);
    // The capture it needs first works, and then the delta.
    e.capture("fat:medium.img", "web01").source("a.raw").ok();
    e.capture("fat:medium.img", "web01")
        .source("a.raw")
        .arg("--delta")
        .ok();
}

/// A delta of a disk some program is writing, rewritten everywhere the check samples: it was
/// refused as "most likely not the disk" (a set's disk given in the right order was told to
/// check the order), beside the warning that the source is open for writing. The writer is
/// said first, with `--same-source` as the way on for the same disk.
#[test]
fn a_delta_of_a_disk_being_rewritten_names_the_writer_not_another_disk() {
    let e = Env::new();
    e.keygen();
    random_disk(&e.p("a.raw"), 12 << 20, 1);
    fs::create_dir(e.p("mnt")).unwrap();
    e.capture("dir:mnt", "web01").source("a.raw").ok();
    random_disk(&e.p("a.raw"), 12 << 20, 2);
    let mut writer = Command::new("bash")
        .args(["-c", "exec 3<>a.raw; sleep 60"])
        .current_dir(e.p(""))
        .spawn()
        .unwrap();
    // Until the shell holds it open.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !fs::read_dir(format!("/proc/{}/fd", writer.id()))
        .map(|d| d.flatten().any(|f| f.file_name() == "3"))
        .unwrap_or(false)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the writer never opened it"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let o = e
        .capture("dir:mnt", "web01")
        .source("a.raw")
        .arg("--delta")
        .run();
    let _ = writer.kill();
    let _ = writer.wait();
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    let t = output_text(&o);
    assert!(
        t.contains("a.raw is open for writing by process")
            && t.contains("rewritten since in every place sampled")
            && t.contains("--same-source captures it anyway")
            && !t.contains("most likely not the disk"),
        "{t}"
    );
}

/// A delta whose source shares no chunk with the generation it continues (another disk given
/// as `--source`, a set's disks in another order) is refused before anything is written: a
/// sample of the chunks the parent stored is read first. It was captured whole, signed, and
/// only warned about afterwards, and ingest took it as the newest generation. The same disk
/// rewritten since goes with `--same-source`, and is then warned about, on stderr and in
/// `--json`, with how to remove it; a real delta is neither refused nor warned about.
#[test]
fn a_delta_of_another_disk_is_refused_before_anything_is_stored() {
    let e = Env::new();
    e.keygen();
    random_disk(&e.p("a.raw"), 12 << 20, 1);
    random_disk(&e.p("b.raw"), 12 << 20, 2);
    fs::create_dir(e.p("mnt")).unwrap();
    e.capture("dir:mnt", "web01").source("a.raw").ok();
    // What the medium lists, but its free space (a dir: medium shares the host's disk).
    let on_medium = |name: &str| {
        let mut v = e.json(&["inspect", "--medium", "dir:mnt", "--name", name]);
        v.as_object_mut().unwrap().remove("free_bytes");
        v
    };
    let listing = || on_medium("web01");
    let before = listing();
    let o = e
        .capture("dir:mnt", "web01")
        .source("b.raw")
        .arg("--delta")
        .run();
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(
        output_text(&o)
            .contains("b.raw is most likely not the disk captured as web01: none of the 12 chunks"),
        "{}",
        output_text(&o)
    );
    assert_eq!(listing(), before, "nothing was written");
    // Its plan says so too (it said "fits", exit 0).
    let o = e
        .capture("dir:mnt", "web01")
        .source("b.raw")
        .args(&["--delta", "--dry-run"])
        .run();
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("is most likely not the disk captured as web01"),
        "{}",
        output_text(&o)
    );
    // The right disk goes on at once (an unfinished generation left behind refused it as
    // "started with different parameters").
    let o = e
        .capture("dir:mnt", "web01")
        .source("a.raw")
        .args(&["--delta", "--json"])
        .run();
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    e.ok(&[
        "medium",
        "rm",
        "--medium",
        "dir:mnt",
        "--name",
        "web01",
        "--generation",
        "2",
        "--force",
    ]);
    // --same-source takes it, with the warning and its advice, which works as written.
    let o = e
        .capture("dir:mnt", "web01")
        .source("b.raw")
        .args(&["--delta", "--same-source", "--json"])
        .run();
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let w = v["warnings"][0].as_str().unwrap_or_default();
    assert!(w.contains("matches generation 1 of web01"), "{v}");
    assert!(w.contains("--generation 2 --force"), "{v}");
    let cmd = w.split('`').nth(1).unwrap();
    let args: Vec<&str> = cmd.split_whitespace().skip(1).collect();
    e.ok(&args);
    assert_eq!(listing(), before);
    let o = e
        .capture("dir:mnt", "web01")
        .source("b.raw")
        .args(&["--delta", "--same-source"])
        .run();
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("WARNING: none of the 12 chunks"),
        "{}",
        output_text(&o)
    );
    // The disk itself, a little changed: neither refused nor warned about.
    let mut d = fs::read(e.p("b.raw")).unwrap();
    d[5 << 20] ^= 1;
    fs::write(e.p("b.raw"), d).unwrap();
    let v = e
        .capture("dir:mnt", "web01")
        .source("b.raw")
        .arg("--delta")
        .json();
    assert!(v.get("warnings").is_none(), "{v}");
    // Another, smaller disk: fewer chunks of it to read (6) than a disk of the same size
    // needs, but its size already differs: refused too (it was taken, signed and ingested as
    // the newest generation, with a warning). The operator's word takes it, warned about.
    random_disk(&e.p("small.raw"), 6 << 20, 3);
    let before = listing();
    let o = e
        .capture("dir:mnt", "web01")
        .source("small.raw")
        .arg("--delta")
        .run();
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(
        output_text(&o).contains(
            "small.raw is most likely not the disk captured as web01: none of the 6 chunks"
        ),
        "{}",
        output_text(&o)
    );
    assert_eq!(listing(), before, "nothing was written");
    let v = e
        .capture("dir:mnt", "web01")
        .source("small.raw")
        .args(&["--delta", "--same-source"])
        .json();
    let w = v["warnings"][0].as_str().unwrap_or_default();
    assert!(
        w.contains("small.raw is 6.00 MiB now") && w.contains("was a disk of 12.00 MiB"),
        "{v}"
    );

    // A set's disks swapped (the very paths of the other disks): refused before anything is
    // stored (it went through with a warning for each disk).
    e.capture("dir:mnt", "db01")
        .sources(&["a.raw", "b.raw"])
        .ok();
    let sets = || on_medium("db01");
    let before = sets();
    let o = e
        .capture("dir:mnt", "db01")
        .sources(&["b.raw", "a.raw"])
        .arg("--delta")
        .run();
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("is disk 1 of set db01"),
        "{}",
        output_text(&o)
    );
    // Copies under new paths, swapped: refused by their chunks (only warned about before).
    fs::copy(e.p("a.raw"), e.p("a2.raw")).unwrap();
    fs::copy(e.p("b.raw"), e.p("b2.raw")).unwrap();
    let o = e
        .capture("dir:mnt", "db01")
        .sources(&["b2.raw", "a2.raw"])
        .arg("--delta")
        .run();
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("b2.raw is most likely not the disk captured as db01.d0")
            && output_text(&o).contains("for set db01, disk 0"),
        "{}",
        output_text(&o)
    );
    assert_eq!(sets(), before, "nothing was written");
    // In the right order, under the new paths: a delta like any other.
    e.capture("dir:mnt", "db01")
        .sources(&["a2.raw", "b2.raw"])
        .arg("--delta")
        .ok();
    // Disk 0 at its place, the two after it swapped: all of them are checked before the
    // first is written (disk 0's delta was written, then disk 1 refused, and the medium held
    // half a set generation that verify failed).
    random_disk(&e.p("c.raw"), 12 << 20, 4);
    fs::copy(e.p("c.raw"), e.p("c2.raw")).unwrap();
    e.capture("dir:mnt", "tri")
        .sources(&["a.raw", "b.raw", "c.raw"])
        .ok();
    let before = on_medium("tri");
    let o = e
        .capture("dir:mnt", "tri")
        .sources(&["a2.raw", "c2.raw", "b2.raw"])
        .arg("--delta")
        .run();
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("for set tri, disk 1"),
        "{}",
        output_text(&o)
    );
    assert_eq!(on_medium("tri"), before, "nothing was written");
    e.ok(&["verify", "--medium", "dir:mnt"]);
}

/// Two media that are no span, each with a capture web01 (two shipments' media given
/// together): ingest wrote whichever came first in the order given and said "verified",
/// though `--medium` promises any order. Refused as ambiguous, nothing written.
#[test]
fn the_same_capture_name_on_two_media_that_are_no_span_is_ambiguous() {
    let e = Env::new();
    e.keygen();
    random_disk(&e.p("one.raw"), 3 << 20, 1);
    random_disk(&e.p("two.raw"), 3 << 20, 2);
    let a = e.fat("a.img", "64MiB");
    let b = e.fat("b.img", "64MiB");
    e.capture(&a, "web01").source("one.raw").ok();
    e.capture(&b, "web01").source("two.raw").ok();
    let o = e
        .ingest(&a, "web01")
        .medium(&b)
        .untrusted()
        .target("file:vol.raw")
        .run();
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("web01 is on both fat:a.img and fat:b.img"),
        "{}",
        output_text(&o)
    );
    assert!(!e.p("vol.raw").exists());
    // The shipment listing does not call them one complete machine.
    let i = e.json(&["inspect", "--medium", &a, "--medium", &b]);
    assert_eq!(i["shipment"]["complete"], false, "{i}");
    assert_eq!(
        i["shipment"]["machines"][0]["generations"][0]["state"], "ambiguous",
        "{i}"
    );
}

/// A damaged key cache entry of a capture with a passphrase slot: the right passphrase was
/// called "another one" (which ingest then took); it is named as the passphrase that opens the
/// slot beside a cached key that does not, and `keys forget` lets the same delta go on.
#[test]
fn a_damaged_cached_key_beside_the_right_passphrase_is_named_and_forgotten() {
    let e = Env::new();
    e.keygen();
    random_disk(&e.p("disk.raw"), 1 << 20, 7);
    fs::create_dir(e.p("m")).unwrap();
    fs::write(e.p("pass.txt"), "ferry orchid basalt lantern\n").unwrap();
    let delta = || {
        e.capture("dir:m", "db02").source("disk.raw").args(&[
            "--passphrase-work-factor",
            "10",
            "--passphrase-file",
            "pass.txt",
        ])
    };
    delta().ok();
    let dir = e.p("state/mgear/keys");
    let file = fs::read_dir(&dir)
        .unwrap()
        .map(|f| f.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "key"))
        .expect("db02's cached key");
    let damaged: String = fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| match l.strip_prefix("key ") {
            Some(hex) => format!(
                "key {}{}\n",
                if hex.starts_with('0') { "1" } else { "0" },
                &hex[1..]
            ),
            None => format!("{l}\n"),
        })
        .collect();
    fs::write(&file, damaged).unwrap();
    random_disk(&e.p("disk.raw"), 1 << 20, 8);
    let before = tree(&e.p("m"));
    let o = delta().arg("--delta").run();
    refused(
        &o,
        "the passphrase opens capture db02's passphrase slot, but the data key cached",
    );
    assert!(
        output_text(&o).contains("`mgear keys forget --name db02`"),
        "{}",
        output_text(&o)
    );
    assert_eq!(tree(&e.p("m")), before);
    e.ok(&["keys", "forget", "--name", "db02"]);
    // Which recipients the slot was made for is known nowhere now: even the same one is
    // refused, and the delta without it goes on.
    refused(&delta().arg("--delta").run(), "not even the same one");
    e.ok(&[
        "capture",
        "--name",
        "db02",
        "--medium",
        "dir:m",
        "--source",
        "disk.raw",
        "--delta",
        "--passphrase-file",
        "pass.txt",
    ]);
}

/// A capture's key slots are made at its first generation; a resume or a
/// delta keeps them. A delta (or resume) naming another recipient, a
/// passphrase the capture has no slot for, a passphrase its slot was not
/// made with, or `--passphrase-generate` would finish as if that key opened
/// the capture: each is refused (exit 2) before anything is written, and the
/// same command with the slots it was made with goes on.
#[test]
fn a_delta_naming_other_key_slots_is_refused_and_the_medium_kept() {
    let e = Env::new();
    e.keygen();
    e.ok(&["keygen", "--out", "other.key"]);
    random_disk(&e.p("disk.raw"), 1 << 20, 7);
    fs::create_dir(e.p("m")).unwrap();
    fs::write(e.p("pass1.txt"), "ferry orchid basalt lantern\n").unwrap();
    fs::write(e.p("pass2.txt"), "quartz meadow signal copper\n").unwrap();
    let medium = "dir:m";
    let capture = |name: &str| {
        e.capture(medium, name)
            .source("disk.raw")
            .args(&["--passphrase-work-factor", "10"])
    };
    capture("web01").ok();
    capture("db02")
        .args(&["--passphrase-file", "pass1.txt"])
        .ok();
    let before = tree(&e.p("m"));
    for (line, says) in [
        (
            capture("web01").args(&["--delta", "--recipient", "other.pub"]),
            "key slot was made for recipient(s)",
        ),
        (
            capture("web01").args(&["--delta", "--passphrase-file", "pass1.txt"]),
            "has no passphrase slot",
        ),
        (
            capture("db02").args(&["--delta", "--passphrase-file", "pass2.txt"]),
            "does not open capture db02's passphrase slot",
        ),
        (
            capture("db02").args(&[
                "--delta",
                "--passphrase-file",
                "new.txt",
                "--passphrase-generate",
            ]),
            "--passphrase-generate would write a passphrase that does not open it",
        ),
    ] {
        let o = line.run();
        refused(&o, says);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("--abort"), "{err}");
        assert_eq!(tree(&e.p("m")), before, "{}", output_text(&o));
    }
    assert!(!e.p("new.txt").exists(), "a passphrase that opens nothing");
    // The slots it was made with: the deltas go on.
    capture("web01").arg("--delta").ok();
    capture("db02")
        .args(&["--delta", "--passphrase-file", "pass1.txt"])
        .ok();
    // And after them: a delta rewrote the key cache without the slots it recorded, and from
    // the third generation on another recipient was taken. A machine set records its slots too.
    refused(
        &capture("web01")
            .args(&["--delta", "--recipient", "other.pub"])
            .run(),
        "key slot was made for recipient(s)",
    );
    // A delta naming only some of the recipients: refused, saying the rest still open it.
    capture("two").args(&["--recipient", "other.pub"]).ok();
    let o = capture("two").arg("--delta").run();
    refused(
        &o,
        "the slot stays as it was made (each of them still opens the capture)",
    );
    random_disk(&e.p("disk1.raw"), 1 << 20, 9);
    let set = || e.capture(medium, "app").sources(&["disk.raw", "disk1.raw"]);
    set().ok();
    set().arg("--delta").ok();
    let before = tree(&e.p("m"));
    refused(
        &set().args(&["--delta", "--recipient", "other.pub"]).run(),
        "key slot was made for recipient(s)",
    );
    assert_eq!(tree(&e.p("m")), before);
    // A damaged key cache file: named as such (the generic advice was to try --identity,
    // which capture does not have).
    let dir = e.p("state/mgear/keys");
    let file = fs::read_dir(&dir)
        .unwrap()
        .map(|f| f.unwrap().path())
        .find(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.starts_with("web01-") && n.ends_with(".key")
        })
        .expect("web01's cached key");
    let text = fs::read_to_string(&file).unwrap();
    let damaged: String = text
        .lines()
        .map(|l| match l.strip_prefix("key ") {
            Some(hex) => format!(
                "key {}{}\n",
                if hex.starts_with('0') { "1" } else { "0" },
                &hex[1..]
            ),
            None => format!("{l}\n"),
        })
        .collect();
    fs::write(&file, damaged).unwrap();
    let o = capture("web01").arg("--delta").run();
    refused(&o, "does not open it: the key cache file");
    assert!(
        !output_text(&o).contains("--identity"),
        "{}",
        output_text(&o)
    );
    assert_eq!(tree(&e.p("m")), before);
    // The key forgotten and opened again by the passphrase: which recipients the slot was
    // made for is known nowhere, and a delta naming another one finished as if it could open
    // the capture (and the rebuilt cache checked nothing after it). A --recipient is refused
    // then, the same delta without one goes on, and so do the deltas after it.
    e.ok(&["keys", "forget", "--name", "db02"]);
    let bare = || {
        e.run(&[
            "capture",
            "--name",
            "db02",
            "--medium",
            medium,
            "--source",
            "disk.raw",
            "--delta",
            "--passphrase-file",
            "pass1.txt",
        ])
    };
    let before = tree(&e.p("m"));
    refused(
        &capture("db02")
            .args(&["--delta", "--passphrase-file", "pass1.txt"])
            .run(),
        "the key cache does not record which recipient(s) capture db02's key slot was made for",
    );
    assert_eq!(tree(&e.p("m")), before);
    assert_eq!(bare().status.code(), Some(0));
    refused(
        &capture("db02")
            .args(&["--delta", "--recipient", "other.pub"])
            .run(),
        "--recipient cannot be checked",
    );
    assert_eq!(bare().status.code(), Some(0));
}

/// A loop device over the medium's image is the medium: as a capture's
/// source, an ingest's `dev:` target, or the medium of a second capture while
/// the image is being written, it is refused and the medium is unchanged.
/// (The loop device once had a lock and an identity of its own.)
#[test]
fn a_loop_device_over_the_medium_is_the_medium() {
    let e = Env::new();
    e.keygen();
    let medium = e.fat("m.img", "64MiB");
    random_disk(&e.p("disk.raw"), 1 << 20, 8);
    e.capture(&medium, "web01").source("disk.raw").ok();
    let dev = Loop::attach(&e.p("m.img"));
    let before = tree(&e.p("m.img"));
    refused(
        &e.capture(&medium, "db02").source(&dev.0).run(),
        "is the medium fat:m.img",
    );
    refused(
        &e.ingest(&medium, "web01")
            .untrusted()
            .target(&format!("dev:{}", dev.0))
            .arg("--force")
            .run(),
        "is the medium fat:m.img",
    );
    refused(
        &e.capture(&medium, "db02")
            .source("disk.raw")
            .args(&["--medium", &format!("fat:{}", dev.0)])
            .run(),
        "the same medium is given twice",
    );
    assert_eq!(tree(&e.p("m.img")), before);
}

/// A FIFO nobody writes to, given where mgear reads or writes a file (the target, a key, a
/// trust file, the report): each blocked in open(2) forever, and a first SIGTERM did not end
/// it. Each is refused now, at once.
#[test]
fn a_fifo_given_for_a_file_is_refused_not_waited_on() {
    let e = Env::new();
    e.keygen();
    let m = e.fat("a.img", "64MiB");
    random_disk(&e.p("a.raw"), 2 << 20, 4);
    e.capture(&m, "web01").source("a.raw").ok();
    let st = std::process::Command::new("mkfifo")
        .arg(e.p("ff"))
        .status()
        .unwrap();
    assert!(st.success());
    let key = ["--identity", "target.key"];
    for (what, args) in [
        ("target", vec!["--target", "file:ff", "--allow-untrusted"]),
        (
            "qcow2 target",
            vec!["--target", "qcow2:ff", "--allow-untrusted"],
        ),
        (
            "trust file",
            vec!["--target", "file:v.raw", "--trust", "ff"],
        ),
        (
            "report",
            vec![
                "--target",
                "file:v.raw",
                "--allow-untrusted",
                "--report",
                "ff",
            ],
        ),
        (
            "identity",
            vec![
                "--target",
                "file:v.raw",
                "--allow-untrusted",
                "--identity",
                "ff",
            ],
        ),
    ] {
        let mut c = e.cmd(&["ingest", "--medium", &m, "--name", "web01"]);
        if what != "identity" {
            c.args(key);
        }
        c.args(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = c.spawn().unwrap();
        let started = std::time::Instant::now();
        while child.try_wait().unwrap().is_none() {
            if started.elapsed() > std::time::Duration::from_secs(30) {
                child.kill().unwrap();
                panic!("{what}: still waiting after 30 s");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let o = child.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{what}: {}", output_text(&o));
    }
    assert!(!e.p("v.raw").exists());
}

/// A disk ingested into a larger device that held a GPT: the old backup header in the
/// device's last sector stayed, and `sgdisk -v`/`wipefs` saw a valid GPT beside the disk's
/// own table. That sector is cleared and said; the disk's bytes and the rest past its end
/// are as they were.
#[test]
fn a_stale_gpt_backup_past_the_disk_on_a_device_is_cleared() {
    stale_gpt_backup_is_cleared(512);
}

/// The same on a device of 4096-byte sectors, whose GPT backup header begins its last 4096
/// bytes (only the last 512 were looked at: it stayed, unsaid).
#[test]
fn a_stale_gpt_backup_on_a_4k_device_is_cleared_too() {
    stale_gpt_backup_is_cleared(4096);
}

/// A 12 MiB device of `sector`-byte sectors holding a GPT backup header in its last sector,
/// and a 4 MiB disk ingested into it: refused without --force (the guard names the header),
/// then written with it, the header cleared and said, nothing else past the disk touched.
fn stale_gpt_backup_is_cleared(sector: usize) {
    let e = Env::new();
    e.keygen();
    let m = e.fat("a.img", "64MiB");
    random_disk(&e.p("a.raw"), 4 << 20, 3);
    e.capture(&m, "web01").source("a.raw").ok();
    let mut dev_bytes = vec![0x5au8; 12 << 20];
    let last = dev_bytes.len() - sector;
    dev_bytes[last..last + 8].copy_from_slice(b"EFI PART");
    fs::write(e.p("vol.img"), &dev_bytes).unwrap();
    let out = std::process::Command::new("losetup")
        .args(["--find", "--show", "--sector-size", &sector.to_string()])
        .arg(e.p("vol.img"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    let dev = Loop(String::from_utf8_lossy(&out.stdout).trim().to_owned());
    let target = format!("dev:{}", dev.0);
    let o = e
        .ingest(&m, "web01")
        .untrusted()
        .target(&target)
        .args(&["--json"])
        .run();
    // The device guard names what it holds first.
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("holds a GPT backup header"),
        "{}",
        output_text(&o)
    );
    let o = e
        .ingest(&m, "web01")
        .untrusted()
        .target(&target)
        .args(&["--json", "--force"])
        .run();
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        v["warnings"]
            .to_string()
            .contains("held a GPT backup header"),
        "{v}"
    );
    // What stays past the disk's end is said, with how much (it went unsaid).
    assert!(
        v["warnings"]
            .to_string()
            .contains("is 8.00 MiB larger than the disk (4.00 MiB of 12.00 MiB)"),
        "{v}"
    );
    drop(dev);
    let after = fs::read(e.p("vol.img")).unwrap();
    assert_eq!(&after[..4 << 20], &fs::read(e.p("a.raw")).unwrap()[..]);
    assert!(
        after[last..].iter().all(|&b| b == 0),
        "the backup header cleared"
    );
    assert!(
        after[4 << 20..last].iter().all(|&b| b == 0x5a),
        "nothing else past the disk touched"
    );
}

/// Two ingests into one device, each with a state dir of its own (two operators, `sudo`
/// with another HOME): both wrote it at once, and one reported a verified volume that held
/// chunks of both disks. The device is held open exclusively while an ingest writes it, so
/// the second is refused and writes nothing: busy, exit 3 with the first one's pid, as a file
/// or NBD target another ingest writes is (it was exit 2, "mounted, or held by ... another
/// ingest"). A read-only device is refused before
/// anything is written and leaves no marker behind (it blocked the next device under its
/// name).
#[test]
fn a_device_another_ingest_writes_or_that_is_read_only_is_refused() {
    let e = Env::new();
    e.keygen();
    let (ma, mb) = (e.fat("a.img", "64MiB"), e.fat("b.img", "64MiB"));
    random_disk(&e.p("a.raw"), 8 << 20, 1);
    random_disk(&e.p("b.raw"), 8 << 20, 2);
    e.capture(&ma, "web01").source("a.raw").ok();
    e.capture(&mb, "web01").source("b.raw").ok();
    fs::write(e.p("vol.img"), vec![0u8; 8 << 20]).unwrap();
    let dev = Loop::attach(&e.p("vol.img"));
    let target = format!("dev:{}", dev.0);
    let first = e
        .ingest(&ma, "web01")
        .untrusted()
        .target(&target)
        .args(&["--rate-limit", "4MiB/s"])
        .spawn();
    std::thread::sleep(std::time::Duration::from_millis(700));
    let mut second = e.ingest(&mb, "web01").untrusted().target(&target).command();
    second.env("XDG_STATE_HOME", e.p("other-state"));
    let o = second.output().unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", output_text(&o));
    assert!(
        output_text(&o).contains(&format!("target {target} is in use by pid {}", first.id())),
        "{}",
        output_text(&o)
    );
    let o = first.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", output_text(&o));
    mgear_tests::same_file(&e.p("vol.img"), &e.p("a.raw"));

    fs::write(e.p("ro.img"), vec![0u8; 8 << 20]).unwrap();
    let out = std::process::Command::new("losetup")
        .args(["--find", "--show", "--read-only"])
        .arg(e.p("ro.img"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    let ro = Loop(String::from_utf8_lossy(&out.stdout).trim().to_owned());
    let o = e
        .ingest(&ma, "web01")
        .untrusted()
        .target(&format!("dev:{}", ro.0))
        .run();
    refused(&o, "is read-only");
    let markers = fs::read_dir(e.p("state/mgear/ingest"))
        .map(|d| {
            d.flatten()
                .filter(|f| {
                    f.file_name()
                        .to_string_lossy()
                        .contains(ro.0.trim_start_matches("/dev/"))
                })
                .count()
        })
        .unwrap_or(0);
    assert_eq!(markers, 0, "no marker for a device nothing was written to");
}

/// A device an ingest began writing and did not finish holds part of a
/// disk: `mgear boot` refuses it (exit 2, naming the way on) until the
/// ingest ran again to the end. Nothing is started.
#[test]
fn a_device_an_ingest_did_not_finish_is_not_booted() {
    let e = Env::new();
    e.keygen();
    let medium = e.fat("m.img", "64MiB");
    random_disk(&e.p("disk.raw"), 8 << 20, 9);
    e.capture(&medium, "web01").source("disk.raw").ok();
    fs::write(e.p("vol.img"), vec![0u8; 8 << 20]).unwrap();
    let dev = Loop::attach(&e.p("vol.img"));
    let target = format!("dev:{}", dev.0);
    let ingest = e
        .ingest(&medium, "web01")
        .untrusted()
        .target(&target)
        .arg("--force");
    ingest.killed_after("2MiB/s", 1500);
    let boot = [
        "boot",
        "--target",
        &target,
        "--wait-for",
        "x",
        "--timeout",
        "5",
    ];
    refused(
        &e.run(&boot),
        "an ingest into it began and was not finished",
    );
    // The same device by another path (as /dev/disk/by-id/... names it): refused too, by
    // boot and by serve (the marker is named by the path the ingest was given).
    let made = std::process::Command::new("sh")
        .arg("-c")
        .arg(r#"d="$1" p="$2"; set -- $(stat -c '%t %T' "$d"); mknod "$p" b $((0x$1)) $((0x$2))"#)
        .arg("sh")
        .arg(&dev.0)
        .arg(e.p("by-id-link"))
        .status()
        .unwrap();
    assert!(made.success(), "mknod (a second node of the loop device)");
    let alias = format!("dev:{}", e.p("by-id-link").display());
    refused(
        &e.run(&[
            "boot",
            "--target",
            &alias,
            "--wait-for",
            "x",
            "--timeout",
            "5",
        ]),
        "an ingest into it began and was not finished",
    );
    refused(
        &e.run(&[
            "serve",
            "--target",
            &alias,
            "--medium",
            &medium,
            "--name",
            "web01",
            "--identity",
            "target.key",
            "--allow-untrusted",
            "--listen",
            "127.0.0.1:0",
            "--once",
        ]),
        "an ingest into it began and was not finished",
    );
    // A second loop device over the same file, and that file itself: the same half disk.
    let second = Loop::attach(&e.p("vol.img"));
    for t in [
        format!("dev:{}", second.0),
        format!("file:{}", e.p("vol.img").display()),
        // Whatever the prefix says it is.
        format!("dev:{}", e.p("vol.img").display()),
        format!("file:{}", dev.0),
    ] {
        refused(
            &e.run(&["boot", "--target", &t, "--wait-for", "x", "--timeout", "5"]),
            "began",
        );
    }
    drop(second);
    let markers = || {
        fs::read_dir(e.p("state/mgear/ingest"))
            .unwrap()
            .filter(|f| {
                f.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".mgear-incomplete")
            })
            .count()
    };
    assert_eq!(markers(), 1, "the killed ingest's marker");
    // Finished, the device is bootable again (its marker gone: boot no longer refuses it).
    ingest.ok();
    assert_eq!(markers(), 0);
}

/// A delta of another disk made from the same image (its first chunks alike) passed the
/// check before writing on its first match and was stored without a word; and a delta
/// resumed after it was stopped before storing anything skipped that check, so another
/// disk at its path was stored whole, exit 0. The first is warned about (more changed than
/// stayed, with how to remove it); the second is refused as a new delta is.
#[test]
fn a_delta_sharing_little_is_warned_and_a_resumed_one_is_checked() {
    let e = Env::new();
    e.keygen();
    random_disk(&e.p("a.raw"), 12 << 20, 61);
    fs::create_dir(e.p("m")).unwrap();
    e.capture("dir:m", "web01").source("a.raw").ok();
    // Another disk whose first 2 MiB are a.raw's.
    random_disk(&e.p("b.raw"), 12 << 20, 62);
    let mut b = fs::read(e.p("b.raw")).unwrap();
    b[..2 << 20].copy_from_slice(&fs::read(e.p("a.raw")).unwrap()[..2 << 20]);
    fs::write(e.p("b.raw"), &b).unwrap();
    let v = e
        .capture("dir:m", "web01")
        .source("b.raw")
        .arg("--delta")
        .json();
    let w = v["warnings"].to_string();
    assert!(
        w.contains("only 2 of the chunks") && w.contains("more of the disk changed than stayed"),
        "{v}"
    );
    e.ok(&[
        "medium",
        "rm",
        "--medium",
        "dir:m",
        "--name",
        "web01",
        "--generation",
        "2",
        "--force",
    ]);
    // A delta of a.raw stopped at once (nothing stored), then another disk at its path.
    fs::copy(e.p("a.raw"), e.p("src.raw")).unwrap();
    let line = e.capture("dir:m", "web01").source("src.raw").arg("--delta");
    line.killed_after("1MiB/s", 1500);
    let i = e.json(&["inspect", "--medium", "dir:m"]);
    assert_eq!(
        i["captures"][0]["generations"][1]["state"], "unfinished",
        "{i}"
    );
    random_disk(&e.p("src.raw"), 12 << 20, 63);
    let o = line.run();
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("is most likely not the disk captured as web01"),
        "{}",
        output_text(&o)
    );
    // The disk it was started from goes on.
    fs::copy(e.p("a.raw"), e.p("src.raw")).unwrap();
    line.ok();
    ingests_as(&e, "web01", "out.raw", &fs::read(e.p("a.raw")).unwrap());
}

/// A delta onto a medium whose earlier generation's segment is damaged (cut short here)
/// pointed into it, finished (exit 0, nothing said) and its generation could not be
/// restored. The damaged segment is not reused: its chunks are stored again, the capture
/// warns (stderr and `--json`), and the new generation ingests bit for bit while `verify`
/// still fails the damaged one.
#[test]
fn a_delta_over_a_damaged_segment_stores_its_chunks_again_and_says_so() {
    let e = Env::new();
    e.keygen();
    random_disk(&e.p("disk.raw"), 6 << 20, 51);
    fs::create_dir(e.p("m")).unwrap();
    e.capture("dir:m", "web01").source("disk.raw").ok();
    let seg = e.p("m/MGEAR/web01/G0001/SEG-00000");
    let len = fs::metadata(&seg).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 1)
        .unwrap();
    let v = e
        .capture("dir:m", "web01")
        .source("disk.raw")
        .arg("--delta")
        .json();
    let w = v["warnings"].to_string();
    assert!(
        w.contains("1 segment of earlier generations that this delta would have reused is damaged")
            && w.contains("MGEAR/web01/G0001/SEG-00000"),
        "{v}"
    );
    ingests_as(&e, "web01", "out.raw", &fs::read(e.p("disk.raw")).unwrap());
    let o = e.run(&["verify", "--medium", "dir:m"]);
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
}

/// A target disk that comes back under another number (a USB disk plugged in again is
/// /dev/sdc where it was /dev/sdb; here its loop device attached again), given by the stable
/// link that names it: the killed ingest was refused as writing "another device" (the same
/// file, inode and size named in both), and resumed only by deleting its marker, which wrote
/// it all again. It resumes now, from where it stopped, and reads back as the source. Its
/// finished record names the disk, not the number: a re-run under the new number keeps it
/// (it was refused as holding a partition table), and a blank disk given that number later
/// is written (it was refused, exit 1, as "does not hold it any more").
#[test]
fn a_target_disk_back_under_another_number_resumes_and_stays_known() {
    let e = Env::new();
    e.keygen();
    let medium = e.fat("m.img", "64MiB");
    random_disk(&e.p("disk.raw"), 8 << 20, 19);
    e.capture(&medium, "web01").source("disk.raw").ok();
    fs::write(e.p("vol.img"), vec![0u8; 8 << 20]).unwrap();
    fs::write(e.p("hold.img"), vec![0u8; 1 << 20]).unwrap();
    let first = Loop::attach(&e.p("vol.img"));
    let link = e.p("usb-Disk_T1");
    std::os::unix::fs::symlink(&first.0, &link).unwrap();
    let target = format!("dev:{}", link.display());
    let ingest = e.ingest(&medium, "web01").untrusted().target(&target);
    ingest.killed_after("2MiB/s", 1500);
    let old = first.0.clone();
    drop(first);
    // Its number taken meanwhile, so the disk comes back under another.
    let _hold = Loop::attach(&e.p("hold.img"));
    let second = Loop::attach(&e.p("vol.img"));
    assert_ne!(second.0, old);
    fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(&second.0, &link).unwrap();
    let o = ingest.ok();
    assert!(
        output_text(&o).contains("done before the resume"),
        "{}",
        output_text(&o)
    );
    mgear_tests::same_file(&e.p("vol.img"), &e.p("disk.raw"));
    // Finished: known by the disk under its plain new name too (kept, read back).
    let o = e
        .ingest(&medium, "web01")
        .untrusted()
        .target(&format!("dev:{}", second.0))
        .ok();
    assert!(
        output_text(&o).contains("finished by an earlier ingest on this host"),
        "{}",
        output_text(&o)
    );
    // A blank disk under the name the finished one had: written, not judged as that one.
    let name = second.0.clone();
    drop(second);
    fs::write(e.p("blank.img"), vec![0u8; 8 << 20]).unwrap();
    let third = Loop::attach(&e.p("blank.img"));
    let o = e
        .ingest(&medium, "web01")
        .untrusted()
        .target(&format!("dev:{}", third.0))
        .run();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{} (under {name} before: {})",
        output_text(&o),
        third.0
    );
    mgear_tests::same_file(&e.p("blank.img"), &e.p("disk.raw"));
}

/// A machine set stopped part-way (killed) and then captured again
/// with one `--source` forgotten: the single-disk capture under the set's name was accepted,
/// took the set's directory, and the set could then neither resume nor be aborted without
/// deleting that capture. It is refused (exit 2), the medium unchanged, and the set's own
/// command resumes it.
#[test]
fn a_stopped_set_captured_again_with_one_source_is_refused() {
    let e = Env::new();
    e.keygen();
    let medium = e.fat("m.img", "64MiB");
    random_disk(&e.p("a.raw"), 2 << 20, 13);
    let set = |sources: &[&str]| {
        let mut l = e.capture(&medium, "db");
        for s in sources {
            l = l.source(s);
        }
        l
    };
    random_disk(&e.p("b.raw"), 1 << 20, 14);
    set(&["a.raw", "b.raw"]).killed_after("1MiB/s", 1200);
    let before = tree(&e.p("m.img"));
    refused(
        &set(&["a.raw"]).run(),
        "holds the disks of an unfinished machine set db (db.d0)",
    );
    assert_eq!(tree(&e.p("m.img")), before);
    set(&["a.raw", "b.raw"]).ok();
    e.ok(&["verify", "--medium", &medium]);
}

/// A set whose second disk lost its key slot: ingest wrote and finished disk 0, then failed
/// on disk 1 (a machine half ingested). Every disk's key slots are checked first: refused
/// with nothing written.
#[test]
fn a_set_disk_without_key_slots_is_found_before_any_disk_is_written() {
    let e = Env::new();
    e.keygen();
    fs::create_dir(e.p("m")).unwrap();
    random_disk(&e.p("a.raw"), 2 << 20, 16);
    random_disk(&e.p("b.raw"), 1 << 20, 17);
    e.capture("dir:m", "db").sources(&["a.raw", "b.raw"]).ok();
    fs::remove_file(e.p("m/MGEAR/db.d1/KEYS")).unwrap();
    let o = e
        .ingest("dir:m", "db")
        .untrusted()
        .unsealed()
        .target("file:o-{disk}.raw")
        .run();
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("disk 1 (db.d1) has no key slot"),
        "{}",
        output_text(&o)
    );
    assert!(!e.p("o-0.raw").exists() && !e.p("o-0.raw.partial").exists());
}

/// Bytes appended to a segment after its trailer: verify refused the medium, ingest read past
/// them and wrote the volume. Ingest refuses too (exit 1), as verify does.
#[test]
fn a_segment_with_bytes_after_its_trailer_is_refused_by_ingest_too() {
    use std::io::Write;
    let e = Env::new();
    e.keygen();
    fs::create_dir(e.p("m")).unwrap();
    random_disk(&e.p("disk.raw"), 2 << 20, 18);
    e.capture("dir:m", "web01").source("disk.raw").ok();
    fs::OpenOptions::new()
        .append(true)
        .open(e.p("m/MGEAR/web01/G0001/SEG-00000"))
        .unwrap()
        .write_all(b"trailing bytes")
        .unwrap();
    let o = e
        .ingest("dir:m", "web01")
        .untrusted()
        .unsealed()
        .target("file:out.raw")
        .run();
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("its manifest says"),
        "{}",
        output_text(&o)
    );
    assert!(!e.p("out.raw").exists());
}

/// The appliance's medium reached another way as an ingest target: the image behind the
/// simulator (`file:`, `--force`, as "exists: pass --force" invited), a loop device over it,
/// or its own NBD export. Each was overwritten with exit 0 ("verified"), destroying the
/// shipment. Refused (exit 2) even with --force, the medium unchanged.
#[test]
fn the_appliances_medium_is_never_an_ingest_target() {
    let mut lab = crate::appliance_util::Lab::new(64);
    lab.keygen();
    lab.make_disk(3, 19);
    lab.start();
    lab.provision_and_unlock();
    lab.capture();
    let fp = lab.fingerprint();
    let before = tree(&lab.p("medium.img"));
    let dev = Loop::attach(&lab.p("medium.img"));
    for target in [
        format!("file:{}", lab.s("medium.img")),
        format!("dev:{}", dev.0),
        lab.nbd_url(),
    ] {
        let o = Line::ingest(&lab, "web01")
            .args(&["--trust-appliance", &fp])
            .appliance(&lab.tty())
            .unsealed()
            .target(&target)
            .arg("--force")
            .run();
        refused(&o, "is the medium of the appliance at");
        assert_eq!(tree(&lab.p("medium.img")), before, "{target}");
    }
    lab.stop();
}

/// A `dev:` ingest killed part-way leaves a marker keyed by the device's path; another volume
/// attached at that path later (here: a FAT medium on the same loop device) was taken for the
/// unfinished one and overwritten, without --force or the file-system check. The marker names
/// its device: the other one gets the usual check (refused without --force), and with --force
/// the marker's device is named instead of writing.
#[test]
fn a_marker_left_for_one_device_is_not_taken_for_another_at_its_path() {
    let e = Env::new();
    e.keygen();
    let medium = e.fat("m.img", "64MiB");
    random_disk(&e.p("disk.raw"), 8 << 20, 20);
    e.capture(&medium, "web01").source("disk.raw").ok();
    fs::write(e.p("vol-a.img"), vec![0u8; 8 << 20]).unwrap();
    let dev = Loop::attach(&e.p("vol-a.img"));
    let target = format!("dev:{}", dev.0);
    let ingest = e
        .ingest(&medium, "web01")
        .untrusted()
        .target(&target)
        .arg("--force");
    ingest.killed_after("2MiB/s", 1500);
    // Another volume, a FAT medium, attached at the same path.
    e.fat("vol-b.img", "64MiB");
    let before = tree(&e.p("vol-b.img"));
    let swap = |file: &str| {
        let st = std::process::Command::new("losetup")
            .arg("-d")
            .arg(&dev.0)
            .status()
            .unwrap();
        assert!(st.success());
        let st = std::process::Command::new("losetup")
            .arg(&dev.0)
            .arg(e.p(file))
            .status()
            .unwrap();
        assert!(st.success(), "losetup {} {file}", dev.0);
    };
    swap("vol-b.img");
    let plain = e.ingest(&medium, "web01").untrusted().target(&target).run();
    refused(&plain, "holds a FAT32 file system");
    refused(&ingest.run(), "was writing another device");
    assert_eq!(tree(&e.p("vol-b.img")), before);
    // Its own device back: the unfinished ingest resumes and finishes.
    swap("vol-a.img");
    ingest.ok();
    assert_eq!(
        fs::read(e.p("vol-a.img")).unwrap(),
        fs::read(e.p("disk.raw")).unwrap()
    );
}

/// Another capture ingested into a target whose ingest is unfinished is refused, and now
/// leaves that ingest's `.partial` as it was: the refused command resized it to its own disk
/// first, and the unfinished ingest's resume then failed its read-back.
#[test]
fn a_refused_ingest_leaves_another_ingests_partial_as_it_was() {
    let e = Env::new();
    e.keygen();
    fs::create_dir(e.p("m")).unwrap();
    random_disk(&e.p("big.raw"), 12 << 20, 21);
    random_disk(&e.p("small.raw"), 2 << 20, 22);
    e.capture("dir:m", "big").source("big.raw").ok();
    e.capture("dir:m", "small").source("small.raw").ok();
    let big = e
        .ingest("dir:m", "big")
        .untrusted()
        .unsealed()
        .target("file:vol.raw");
    big.killed_after("2MiB/s", 2500);
    let before = tree(&e.p("vol.raw.partial"));
    let o = e
        .ingest("dir:m", "small")
        .untrusted()
        .unsealed()
        .target("file:vol.raw")
        .run();
    assert_ne!(o.status.code(), Some(0), "{}", output_text(&o));
    assert_eq!(tree(&e.p("vol.raw.partial")), before);
    big.ok();
    assert_eq!(
        fs::read(e.p("vol.raw")).unwrap(),
        fs::read(e.p("big.raw")).unwrap()
    );
}

/// A resume reads on from the source as named now, and the medium records only that name.
/// Another disk of the same size put at the path between the stop and the resume was read on
/// from: the generation joined two disks, and ingest verified the mix bit for bit against
/// what was captured. The resume is refused (exit 2, the medium untouched) and the way on
/// named; the disk it started from then resumes and ingests bit for bit. A disk repartitioned
/// in between (its disk signature rewritten) resumes with `--same-source`, the operator's word.
#[test]
fn a_resume_from_another_disk_at_the_same_path_is_refused() {
    let e = Env::new();
    e.keygen();
    random_disk(&e.p("disk.raw"), 6 << 20, 41);
    fs::create_dir(e.p("m")).unwrap();
    let line = e.capture("dir:m", "web01").source("disk.raw");
    line.killed_after("2MiB/s", 1500);
    fs::rename(e.p("disk.raw"), e.p("first.raw")).unwrap();
    random_disk(&e.p("disk.raw"), 6 << 20, 42);
    let before = tree(&e.p("m"));
    let o = line.run();
    let text = output_text(&o);
    assert_eq!(o.status.code(), Some(2), "{text}");
    assert!(
        text.contains("it is most likely another disk, and resuming would join two disks into one")
            && text.contains("`mgear capture --abort --medium dir:m --name web01`"),
        "{text}"
    );
    // Random disks carry no label: told apart by content, after the resume closed the
    // stopped run's last segment (which the right disk's resume below takes on). Nothing
    // of the other disk was stored.
    let _ = before;
    fs::rename(e.p("disk.raw"), e.p("other.raw")).unwrap();
    fs::rename(e.p("first.raw"), e.p("disk.raw")).unwrap();
    assert!(output_text(&line.ok()).contains("resumed"));
    ingests_as(&e, "web01", "out.raw", &fs::read(e.p("disk.raw")).unwrap());

    // Repartitioned between the stop and the resume: refused as well, and resumed on the
    // operator's word; what was captured before the stop keeps the old partition table.
    // An MBR: its disk signature names the disk.
    let mut disk = fs::read(e.p("other.raw")).unwrap();
    disk[510..512].copy_from_slice(&[0x55, 0xaa]);
    fs::write(e.p("other.raw"), &disk).unwrap();
    let second = e.capture("dir:m", "web02").source("other.raw");
    second.killed_after("2MiB/s", 1500);
    let mut disk = fs::read(e.p("other.raw")).unwrap();
    let captured = disk.clone();
    disk[440..444].copy_from_slice(b"NEW!");
    fs::write(e.p("other.raw"), &disk).unwrap();
    assert_eq!(second.run().status.code(), Some(2));
    let o = second.clone().arg("--same-source").ok();
    assert!(output_text(&o).contains("resumed"), "{}", output_text(&o));
    ingests_as(&e, "web02", "out2.raw", &captured);
}

/// A disk that came back under another name (a USB disk unplugged and plugged in again is
/// /dev/sdc where it was /dev/sdb) could not be resumed: the resume was refused as "started
/// with different parameters", naming no parameter, and the only way on was to capture it
/// again. The refusal now names the name it was started with and `--source-was`, which
/// resumes it (the stored chunks are still compared: another disk is refused with it too)
/// and ingests bit for bit under the name it began with; a wrong `--source-was` is told the
/// right one, and a new generation does not take it.
#[test]
fn a_disk_back_under_another_name_resumes_with_source_was() {
    let e = Env::new();
    e.keygen();
    random_disk(&e.p("sdb.raw"), 6 << 20, 43);
    fs::create_dir(e.p("m")).unwrap();
    e.capture("dir:m", "web01")
        .source("sdb.raw")
        .killed_after("2MiB/s", 1500);
    fs::rename(e.p("sdb.raw"), e.p("sdc.raw")).unwrap();
    let (was, is) = (e.s("sdb.raw"), e.s("sdc.raw"));
    let now = e.capture("dir:m", "web01").source("sdc.raw");
    let before = tree(&e.p("m"));
    let o = now.run();
    let text = output_text(&o);
    assert_eq!(o.status.code(), Some(2), "{text}");
    assert!(
        text.contains(&format!(
            "it was started from source {was}, and this run reads {is}"
        )) && text.contains(&format!("add `--source-was {was}`")),
        "{text}"
    );
    assert_eq!(tree(&e.p("m")), before, "nothing was written");
    let o = now.clone().args(&["--source-was", "sdx.raw"]).run();
    let text = output_text(&o);
    assert_eq!(o.status.code(), Some(2), "{text}");
    assert!(
        text.contains(&format!(
            "generation 1 was started from source {was}, not {}: give `--source-was {was}`",
            e.s("sdx.raw")
        )),
        "{text}"
    );
    // Another disk of the size under the old name's word: still told apart by content.
    random_disk(&e.p("other.raw"), 6 << 20, 44);
    let o = e
        .capture("dir:m", "web01")
        .source("other.raw")
        .args(&["--source-was", &was])
        .run();
    let text = output_text(&o);
    assert_eq!(o.status.code(), Some(2), "{text}");
    assert!(text.contains("most likely another disk"), "{text}");
    let o = now.clone().args(&["--source-was", &was]).ok();
    assert!(output_text(&o).contains("resumed"), "{}", output_text(&o));
    ingests_as(&e, "web01", "out.raw", &fs::read(e.p("sdc.raw")).unwrap());
    let i = e.json(&["inspect", "--medium", "dir:m"]);
    assert!(
        i.to_string()
            .contains(&format!("\"source\":{}", serde_json::json!(was))),
        "{i}"
    );
    // Only a resume takes it, and its plan says so too (it said "fits").
    for plan in [false, true] {
        let mut line = now.clone().args(&["--delta", "--source-was", &was]);
        if plan {
            line = line.arg("--dry-run");
        }
        let o = line.run();
        let text = output_text(&o);
        assert_eq!(o.status.code(), Some(2), "{text}");
        assert!(
            text.contains(
                "--source-was is for resuming an unfinished generation, and capture web01 has none"
            ),
            "{text}"
        );
    }
}

/// Disks whose start does not tell them apart: a file system made on the bare disk (ext4
/// keeps its UUID past the first KiB), an unpartitioned data disk, another disk given the
/// same partition table, two disks whose first chunks are alike (the last three are told
/// apart by the chunks the stopped run stored, read again). Another such disk at the same
/// path is refused; the same disk resumes. A set given with its disks swapped is told so,
/// not that a disk is another.
#[test]
fn a_resume_from_another_bare_disk_or_a_swapped_set_is_refused() {
    let e = Env::new();
    e.keygen();
    fs::create_dir(e.p("m")).unwrap();
    // ext4 on the whole disk (its first KiB zeros), random data after the superblocks.
    let ext = |name: &str, seed: u64| {
        random_disk(&e.p(name), 12 << 20, seed);
        let st = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F", &e.s(name)])
            .status()
            .expect("mkfs.ext4 (Debian: e2fsprogs)");
        assert!(st.success());
        let mut d = fs::read(e.p(name)).unwrap();
        assert!(d[..1024].iter().all(|&b| b == 0));
        let mut tail = vec![0u8; 10 << 20];
        rand::rngs::SmallRng::seed_from_u64(seed + 100).fill_bytes(&mut tail);
        d[2 << 20..].copy_from_slice(&tail);
        fs::write(e.p(name), d).unwrap();
    };
    // Zeros, then data: no partition table, no file system.
    let data = |name: &str, seed: u64| {
        random_disk(&e.p(name), 12 << 20, seed);
        let mut d = fs::read(e.p(name)).unwrap();
        d[..64 << 10].fill(0);
        fs::write(e.p(name), d).unwrap();
    };
    // Another disk given the same partition table (`sfdisk -d A | sfdisk B`): the table
    // names it as the first, its data does not.
    let table = |name: &str, seed: u64| {
        random_disk(&e.p(name), 12 << 20, seed);
        let mut d = fs::read(e.p(name)).unwrap();
        d[..512].fill(0);
        d[440..444].copy_from_slice(b"SAME");
        d[446..462].copy_from_slice(&[0, 0x20, 0x21, 0, 0x83, 0, 0, 0, 0, 8, 0, 0, 0, 0x58, 0, 0]);
        d[510..512].copy_from_slice(&[0x55, 0xaa]);
        fs::write(e.p(name), d).unwrap();
    };
    // Two 64 MiB disks whose first 2 MiB are alike (made from one image), the rest not.
    let prefix = |name: &str, seed: u64| {
        random_disk(&e.p(name), 64 << 20, seed);
        let mut d = fs::read(e.p(name)).unwrap();
        let mut head = vec![0u8; 2 << 20];
        rand::rngs::SmallRng::seed_from_u64(99).fill_bytes(&mut head);
        head[..64 << 10].fill(0);
        d[..2 << 20].copy_from_slice(&head);
        fs::write(e.p(name), d).unwrap();
    };
    // The same with a partition table alike too and 3 MiB alike (one disk made from the
    // other's image): its labels match, and two of the chunks read again did; one match was
    // enough for a disk with labels, and the two disks were joined.
    let labelled = |name: &str, seed: u64| {
        random_disk(&e.p(name), 64 << 20, seed);
        let mut d = fs::read(e.p(name)).unwrap();
        let mut head = vec![0u8; 3 << 20];
        rand::rngs::SmallRng::seed_from_u64(97).fill_bytes(&mut head);
        head[..512].fill(0);
        head[440..444].copy_from_slice(b"SAME");
        head[446..462]
            .copy_from_slice(&[0, 0x20, 0x21, 0, 0x83, 0, 0, 0, 0, 8, 0, 0, 0, 0x58, 0, 0]);
        head[510..512].copy_from_slice(&[0x55, 0xaa]);
        d[..3 << 20].copy_from_slice(&head);
        fs::write(e.p(name), d).unwrap();
    };
    // Two 24 MiB disks whose first MiB is alike; then the first is zeros up to 20 MiB, the
    // second holds data up to 8 MiB: the stopped run stored only chunk 0 and read zeros,
    // which the other disk, read on from there, was joined to.
    let zeros = |name: &str, seed: u64| {
        random_disk(&e.p(name), 24 << 20, seed);
        let mut d = fs::read(e.p(name)).unwrap();
        let mut head = vec![0u8; 1 << 20];
        rand::rngs::SmallRng::seed_from_u64(98).fill_bytes(&mut head);
        d[..1 << 20].copy_from_slice(&head);
        let from = if seed % 2 == 1 { 1 << 20 } else { 8 << 20 };
        d[from..20 << 20].fill(0);
        fs::write(e.p(name), d).unwrap();
    };
    for (kind, first, second) in [
        ("ext4", "e1.raw", "e2.raw"),
        ("data", "d1.raw", "d2.raw"),
        ("table", "t1.raw", "t2.raw"),
        ("prefix", "p1.raw", "p2.raw"),
        ("labelled", "l1.raw", "l2.raw"),
        ("zeros", "z1.raw", "z2.raw"),
    ] {
        match kind {
            "ext4" => (ext(first, 51), ext(second, 52)),
            "labelled" => (labelled(first, 63), labelled(second, 64)),
            "data" => (data(first, 53), data(second, 54)),
            "table" => (table(first, 57), table(second, 58)),
            "zeros" => (zeros(first, 61), zeros(second, 62)),
            _ => (prefix(first, 59), prefix(second, 60)),
        };
        fs::copy(e.p(first), e.p("src.raw")).unwrap();
        let line = e.capture("dir:m", kind).source("src.raw");
        // The prefix pair needs more stored than its 2 MiB alike before the stop; the zeros
        // pair a stop in its zeros that keeps them (a checkpoint comes with stored data).
        match kind {
            "prefix" | "labelled" => line.killed_after("8MiB/s", 4000),
            "zeros" => line.stopped_after("2MiB/s", 2500),
            _ => line.killed_after("2MiB/s", 2500),
        }
        fs::copy(e.p(second), e.p("src.raw")).unwrap();
        let o = line.run();
        let text = output_text(&o);
        assert_eq!(o.status.code(), Some(2), "{kind}: {text}");
        assert!(
            text.contains(
                "it is most likely another disk, and resuming would join two disks into one"
            ),
            "{kind}: {text}"
        );
        fs::copy(e.p(first), e.p("src.raw")).unwrap();
        assert!(output_text(&line.ok()).contains("resumed"), "{kind}");
        ingests_as(
            &e,
            kind,
            &format!("{kind}.out"),
            &fs::read(e.p(first)).unwrap(),
        );
    }

    // A set stopped in its second disk, re-run with the disks swapped.
    random_disk(&e.p("s0.raw"), 3 << 20, 55);
    random_disk(&e.p("s1.raw"), 6 << 20, 56);
    let set = e.capture("dir:m", "db").sources(&["s0.raw", "s1.raw"]);
    set.killed_after("2MiB/s", 2500);
    let o = e
        .capture("dir:m", "db")
        .sources(&["s1.raw", "s0.raw"])
        .run();
    let text = output_text(&o);
    assert_eq!(o.status.code(), Some(2), "{text}");
    assert!(
        text.contains("disk 0 of set db generation 1 is already captured from")
            && text.contains("give the disks in the order the set was captured in"),
        "{text}"
    );
    set.ok();
}

/// A capture's key slot damaged between a stop and the resume (a bad copy, a failing medium,
/// tampering): the resume finished the capture with the damaged slot bound into its
/// manifest, keyless verify called it good, and nothing could decrypt it at the target. The
/// resume is refused (exit 1, nothing written) and the way on named; with the slot as it
/// was written, the same command resumes.
#[test]
fn a_resume_after_its_key_slot_was_damaged_is_refused() {
    let e = Env::new();
    e.keygen();
    random_disk(&e.p("disk.raw"), 6 << 20, 71);
    fs::create_dir(e.p("m")).unwrap();
    let line = e.capture("dir:m", "web01").source("disk.raw");
    line.stopped_after("2MiB/s", 1500);
    let keys = e.p("m/MGEAR/web01/KEYS");
    let written = fs::read(&keys).unwrap();
    fs::write(&keys, &written[..100]).unwrap();
    let o = line.run();
    let text = output_text(&o);
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(
        text.contains("key slots on the medium")
            && text.contains("`mgear capture --abort --medium dir:m --name web01`"),
        "{text}"
    );
    assert_eq!(fs::read(&keys).unwrap().len(), 100, "nothing was written");
    fs::write(&keys, &written).unwrap();
    // The key cache's note of the slots damaged: the check is skipped, and said (it was
    // skipped without a word).
    let note = fs::read_dir(e.p("state/mgear/keys"))
        .unwrap()
        .map(|d| d.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "slots"))
        .expect("the key-slot note");
    fs::write(&note, "garbage\n").unwrap();
    let o = line.ok();
    assert!(output_text(&o).contains("resumed"), "{}", output_text(&o));
    assert!(
        output_text(&o).contains(
            "(the note of capture web01's key slots as its first run wrote them) is damaged"
        ),
        "{}",
        output_text(&o)
    );
    ingests_as(&e, "web01", "out.raw", &fs::read(e.p("disk.raw")).unwrap());
}

/// A rate-limited capture of a mostly empty disk stores little: checkpoints came with 64 MiB
/// stored or 1 GiB read, and a SIGKILL (a pulled cable) at 95 % started it over. One comes
/// every 10 s of progress too, so the re-run goes on from near where it was.
#[test]
fn a_killed_capture_of_a_mostly_empty_disk_resumes_from_its_last_ten_seconds() {
    let e = Env::new();
    e.keygen();
    let mut disk = vec![0u8; 80 << 20];
    rand::rngs::SmallRng::seed_from_u64(81).fill_bytes(&mut disk[..1 << 20]);
    fs::write(e.p("disk.raw"), &disk).unwrap();
    fs::create_dir(e.p("m")).unwrap();
    let line = e.capture("dir:m", "empty").source("disk.raw");
    let mut child = line
        .clone()
        .args(&["--rate-limit", "4MiB/s"])
        .command()
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(12_500));
    assert!(child.try_wait().unwrap().is_none(), "still capturing");
    child.kill().unwrap();
    child.wait().unwrap();
    let r = line.json();
    assert!(
        r["resumed_from_chunk"].as_u64().unwrap() >= 30,
        "resumed from its 10 s checkpoint: {r}"
    );
    ingests_as(&e, "empty", "out.raw", &disk);
}

/// A signed capture stopped and resumed without `--sign` (or with another site key)
/// finished with a receipt the target then refused: the resume is refused up front (exit 2),
/// and resumes with the key it was started with.
#[test]
fn a_resume_must_sign_with_the_key_it_was_started_with() {
    let e = Env::new();
    e.keygen();
    e.ok(&["keygen", "--signing", "--out", "site.key"]);
    e.ok(&["keygen", "--signing", "--out", "other.key"]);
    random_disk(&e.p("disk.raw"), 6 << 20, 73);
    fs::create_dir(e.p("m")).unwrap();
    let line = e.capture("dir:m", "web01").source("disk.raw");
    line.clone().sign("site.key").stopped_after("2MiB/s", 1500);
    for (extra, says) in [
        (vec![], "has no --sign"),
        (vec!["--sign", "other.key"], "signs with another key"),
    ] {
        let o = line.clone().args(&extra).run();
        let text = output_text(&o);
        assert_eq!(o.status.code(), Some(2), "{text}");
        assert!(
            text.contains(says) && text.contains("same --sign KEY"),
            "{text}"
        );
    }
    let r = line.clone().sign("site.key").json();
    assert!(r["resumed_from_chunk"].as_u64().unwrap() > 0, "{r}");
    e.ingest("dir:m", "web01")
        .args(&["--trust", "site.pub", "--allow-unsealed"])
        .target("file:out.raw")
        .ok();
}

/// A signed `--delta` stopped after its generation was finished and before its COMMIT was
/// written (a pulled cable between MANIFEST and COMMIT): the same command again went on to
/// a new generation and left the finished one unsigned, which every tool called complete
/// and the target refused as "captured without --sign". Now the same command signs it and
/// captures nothing; the next run is a new delta. A delta captured unsigned on purpose is
/// not signed behind the operator's back: `--delta --sign` after it is a new generation.
#[test]
fn an_interrupted_signed_delta_is_signed_by_the_same_command_again() {
    let e = Env::new();
    e.keygen();
    e.ok(&["keygen", "--signing", "--out", "site.key"]);
    random_disk(&e.p("disk.raw"), 4 << 20, 74);
    fs::create_dir(e.p("m")).unwrap();
    let line = e
        .capture("dir:m", "web01")
        .source("disk.raw")
        .sign("site.key");
    line.ok();
    random_disk(&e.p("disk.raw"), 4 << 20, 75);
    let delta = line.clone().arg("--delta");
    delta.ok();
    // What the stop leaves: generation 2 finished (MANIFEST), no COMMIT.
    fs::remove_file(e.p("m/MGEAR/web01/G0002/COMMIT")).unwrap();
    let r = delta.json();
    assert_eq!(r["generation"], 2, "{r}");
    assert_eq!(r["receipt"]["signed_only"], true, "{r}");
    assert_eq!(r["stored_chunks"], 0, "{r}");
    let ingest = |g: &str| {
        e.ingest("dir:m", "web01")
            .args(&["--trust", "site.pub", "--allow-unsealed", "--generation", g])
            .target(&format!("file:out{g}.raw"))
            .arg("--force")
            .run()
    };
    let o = ingest("2");
    assert!(o.status.success(), "{}", output_text(&o));
    mgear_tests::same_file(&e.p("out2.raw"), &e.p("disk.raw"));
    // The next run of it is a new delta.
    assert_eq!(delta.json()["generation"], 3);

    // Unsigned on purpose, then a signed delta: a new generation, the unsigned one kept.
    let plain = e
        .capture("dir:m", "web01")
        .source("disk.raw")
        .arg("--delta");
    assert_eq!(plain.json()["generation"], 4);
    assert_eq!(delta.json()["generation"], 5);
    let o = ingest("4");
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
}

/// An image target on a file system with less room than the disk's data: said before the
/// first byte is written (it filled to 100 % and failed part-way with no word before), and
/// the ingest still stops cleanly (exit 3, out of space named).
#[test]
fn an_ingest_onto_a_file_system_too_small_is_warned_about_first() {
    let e = Env::new();
    e.keygen();
    random_disk(&e.p("disk.raw"), 8 << 20, 76);
    fs::create_dir(e.p("m")).unwrap();
    e.capture("dir:m", "web01").source("disk.raw").ok();
    fs::create_dir(e.p("tiny")).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=3m", "tmpfs"])
        .arg(e.p("tiny"))
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("no tmpfs mount here (needs root): nothing to check");
        return;
    }
    let o = e
        .ingest("dir:m", "web01")
        .untrusted()
        .target(&format!("file:{}", e.s("tiny/v.raw")))
        .run();
    let _ = std::process::Command::new("umount")
        .arg(e.p("tiny"))
        .status();
    let text = output_text(&o);
    assert_eq!(o.status.code(), Some(3), "{text}");
    let err = String::from_utf8_lossy(&o.stderr);
    let warned = err.find("may run out of space part-way").expect(&text);
    let failed = err.find("No space left").expect(&text);
    assert!(warned < failed, "warned before it failed: {text}");
}

/// The medium in disguises its first sector does not give away, each of which an ingest
/// wrote over (the shipment gone): a loop device over a loop device of the image at an
/// offset, `qemu-nbd --offset` serving the image, `qemu-nbd` serving a segment of a `dir:`
/// medium; and a loop device over a mounted loop device (written under the mounted file
/// system, with --force). All refused (exit 2), the media verify after.
#[test]
fn the_medium_served_at_an_offset_or_behind_a_loop_chain_is_never_a_target() {
    let e = Env::new();
    e.keygen();
    random_disk(&e.p("disk.raw"), 4 << 20, 77);
    random_disk(&e.p("other.raw"), 4 << 20, 78);
    let fat = e.fat("m.img", "64MiB");
    e.capture(&fat, "web01").source("disk.raw").ok();
    fs::create_dir(e.p("d")).unwrap();
    e.capture("dir:d", "web01").source("disk.raw").ok();
    e.capture("dir:d", "db02").source("other.raw").ok();
    let before = fs::read(e.p("m.img")).unwrap();
    let ingest = |m: &str, target: &str| {
        e.ingest(m, "web01")
            .untrusted()
            .target(target)
            .arg("--force")
            .run()
    };

    let inner = Loop::attach(&e.p("m.img"));
    let out = std::process::Command::new("losetup")
        .args(["--find", "--show", "--offset", "1048576", &inner.0])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    let outer = Loop(String::from_utf8_lossy(&out.stdout).trim().to_owned());
    refused(&ingest(&fat, &format!("dev:{}", outer.0)), "is the medium");
    drop((outer, inner));

    let sock = e.p("off.sock");
    let served = mgear_tests::qemu_nbd(&["-f", "raw", "--offset", "1048576"], &sock, &e.p("m.img"));
    let url = format!("nbd+unix:///?socket={}", sock.display());
    refused(&ingest(&fat, &url), "is open for writing by process");
    drop(served);
    assert!(
        fs::read(e.p("m.img")).unwrap() == before,
        "the image unchanged"
    );

    let seg = e.p("d/MGEAR/db02/G0001/SEG-00000");
    let sock = e.p("seg.sock");
    let served = mgear_tests::qemu_nbd(&["-f", "raw"], &sock, &seg);
    let url = format!("nbd+unix:///?socket={}", sock.display());
    refused(&ingest("dir:d", &url), "is open for writing by process");
    drop(served);
    let v = e.run(&["verify", "--medium", "dir:d"]);
    assert!(v.status.success(), "{}", output_text(&v));

    // A loop device over a mounted loop device: the mounted one is in use.
    let Some(under) = mounted_ext4(&e, "ext.img", 16 << 20, "mnt") else {
        eprintln!("no ext4 mount here: the mounted case is not checked");
        return;
    };
    let over = Loop::attach(std::path::Path::new(&under.0));
    let o = ingest(&fat, &format!("dev:{}", over.0));
    let _ = std::process::Command::new("umount")
        .arg(e.p("mnt"))
        .status();
    refused(&o, "is in use");
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains(&format!("which the loop device {} writes", over.0)),
        "{}",
        output_text(&o)
    );
}

/// Two ingests into one `file:` or `qcow2:` target, each with a state dir of its own: the
/// second was told to adopt or remove the first's live `.partial` (and the first then failed
/// at its rename), or to kill its `qemu-nbd`. The `.partial` is locked while it is written:
/// the second is refused as "being written by another ingest", and the first finishes.
#[test]
fn an_image_target_another_ingest_writes_is_refused_whatever_the_state_dir() {
    let e = Env::new();
    e.keygen();
    let (ma, mb) = (e.fat("a.img", "64MiB"), e.fat("b.img", "64MiB"));
    random_disk(&e.p("a.raw"), 8 << 20, 81);
    random_disk(&e.p("b.raw"), 8 << 20, 82);
    e.capture(&ma, "web01").source("a.raw").ok();
    e.capture(&mb, "web01").source("b.raw").ok();
    for target in [
        format!("file:{}", e.s("t.raw")),
        format!("qcow2:{}", e.s("t.qcow2")),
    ] {
        let first = e
            .ingest(&ma, "web01")
            .untrusted()
            .target(&target)
            .args(&["--rate-limit", "4MiB/s"])
            .spawn();
        std::thread::sleep(std::time::Duration::from_millis(900));
        let mut second = e
            .ingest(&mb, "web01")
            .untrusted()
            .target(&target)
            .arg("--force")
            .command();
        second.env("XDG_STATE_HOME", e.p("other-state"));
        let o = second.output().unwrap();
        refused(&o, "is being written by another ingest right now");
        let o = first.wait_with_output().unwrap();
        assert!(o.status.success(), "{target}: {}", output_text(&o));
    }
    mgear_tests::same_file(&e.p("t.raw"), &e.p("a.raw"));
    let c = std::process::Command::new("qemu-img")
        .args(["compare", "-q"])
        .arg(e.p("t.qcow2"))
        .arg(e.p("a.raw"))
        .status()
        .unwrap();
    assert!(c.success(), "the qcow2 holds the first ingest's disk");
}

/// A signed capture stopped before its first checkpoint (at chunk 0) was taken for a new
/// start: the same command without --sign (or with another key) finished it unsigned, exit
/// 0, and the target refused it. Refused now, with nothing written to the medium. And a
/// finished, signed generation takes no other site's signature as "the missing one", nor
/// one for a run naming another disk: those are told it is already captured.
#[test]
fn a_signed_capture_stopped_at_its_start_or_finished_takes_no_other_signer() {
    let e = Env::new();
    e.keygen();
    e.ok(&["keygen", "--signing", "--out", "site.key"]);
    e.ok(&["keygen", "--signing", "--out", "other.key"]);
    random_disk(&e.p("disk.raw"), 6 << 20, 83);
    random_disk(&e.p("else.raw"), 6 << 20, 84);
    fs::create_dir(e.p("m")).unwrap();
    let line = e.capture("dir:m", "web01").source("disk.raw");
    let mut child = line
        .clone()
        .sign("site.key")
        .args(&["--rate-limit", "1MiB/s"])
        .spawn();
    std::thread::sleep(std::time::Duration::from_millis(400));
    let _ = child.kill();
    let _ = child.wait();
    let i = e.json(&["inspect", "--medium", "dir:m"]);
    assert_eq!(
        i["captures"][0]["generations"][0]["state"], "unfinished",
        "stopped at its start: {i}"
    );
    let files = || {
        let mut v: Vec<(String, Vec<u8>)> = walk(&e.p("m"));
        v.sort();
        v
    };
    let before = files();
    for (extra, says) in [
        (vec![], "has no --sign"),
        (vec!["--sign", "other.key"], "signs with another key"),
    ] {
        let o = line.clone().args(&extra).run();
        let text = output_text(&o);
        assert_eq!(o.status.code(), Some(2), "{text}");
        assert!(text.contains(says), "{text}");
        assert!(files() == before, "nothing written by a refused resume");
    }
    line.clone().sign("site.key").ok();
    for l in [
        line.clone().sign("other.key"),
        e.capture("dir:m", "web01")
            .source("else.raw")
            .sign("site.key"),
    ] {
        let o = l.run();
        assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
        assert!(
            output_text(&o).contains("is already captured as generation 1"),
            "{}",
            output_text(&o)
        );
    }
    e.ingest("dir:m", "web01")
        .args(&["--trust", "site.pub", "--allow-unsealed"])
        .target("file:out.raw")
        .ok();
    mgear_tests::same_file(&e.p("out.raw"), &e.p("disk.raw"));
}

/// Every file under `dir` with its bytes.
fn walk(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push((p.display().to_string(), fs::read(&p).unwrap()));
        }
    }
    out
}

/// The medium on a file system mounted from a loop device over an image file: a second loop
/// device over that image (one volume, another name) and the image itself as a `file:`
/// target are the medium (an ingest wrote over the file system, or replaced the image under
/// the mount, the shipment lost at the next mount). `qemu-nbd --offset` over a loop device
/// of a `fat:` image is the medium too. And two loop devices over one file are one volume:
/// a second ingest through the other one is refused while the first writes.
#[test]
fn the_medium_behind_a_mounted_image_or_a_sibling_loop_device_is_never_a_target() {
    let e = Env::new();
    e.keygen();
    random_disk(&e.p("disk.raw"), 2 << 20, 85);
    let ext = e.p("ext.img");
    let Some(a) = mounted_ext4(&e, "ext.img", 24 << 20, "em") else {
        eprintln!("no ext4 mount here: nothing to check");
        return;
    };
    let m = format!("dir:{}", e.s("em"));
    let cap = e.capture(&m, "web01").source("disk.raw").run();
    let b = Loop::attach(&ext);
    let on_dev = e
        .ingest(&m, "web01")
        .untrusted()
        .target(&format!("dev:{}", b.0))
        .arg("--force")
        .run();
    let on_file = e
        .ingest(&m, "web01")
        .untrusted()
        .target(&format!("file:{}", ext.display()))
        .arg("--force")
        .run();
    let verified = e.run(&["verify", "--medium", &m]);
    drop(b);
    let _ = std::process::Command::new("umount").arg(e.p("em")).status();
    drop(a);
    assert!(cap.status.success(), "{}", output_text(&cap));
    refused(&on_dev, "is the medium");
    refused(&on_file, "is the medium");
    assert!(verified.status.success(), "{}", output_text(&verified));

    // qemu-nbd --offset over a loop device of a fat: image.
    let fat = e.fat("m.img", "64MiB");
    e.capture(&fat, "web01").source("disk.raw").ok();
    let l = Loop::attach(&e.p("m.img"));
    let sock = e.p("l.sock");
    let served = mgear_tests::qemu_nbd(
        &["-f", "raw", "--offset", "1048576"],
        &sock,
        std::path::Path::new(&l.0),
    );
    let url = format!("nbd+unix:///?socket={}", sock.display());
    let o = e
        .ingest(&fat, "web01")
        .untrusted()
        .target(&url)
        .arg("--force")
        .run();
    drop(served);
    drop(l);
    refused(&o, "is open for writing by process");
    let v = e.run(&["verify", "--medium", &fat]);
    assert!(v.status.success(), "{}", output_text(&v));

    // Two loop devices over one file: one volume.
    random_disk(&e.p("big.raw"), 8 << 20, 86);
    e.capture(&fat, "db02").source("big.raw").ok();
    fs::write(e.p("tgt.raw"), vec![0u8; 8 << 20]).unwrap();
    let (x, z) = (Loop::attach(&e.p("tgt.raw")), Loop::attach(&e.p("tgt.raw")));
    let first = e
        .ingest(&fat, "db02")
        .untrusted()
        .target(&format!("dev:{}", x.0))
        .args(&["--rate-limit", "4MiB/s"])
        .spawn();
    std::thread::sleep(std::time::Duration::from_millis(800));
    let mut second = e
        .ingest(&fat, "web01")
        .untrusted()
        .target(&format!("dev:{}", z.0))
        .arg("--force")
        .command();
    second.env("XDG_STATE_HOME", e.p("other-state"));
    let o = second.output().unwrap();
    let done = first.wait_with_output().unwrap();
    drop((x, z));
    refused(&o, "which another ingest is writing right now");
    assert!(done.status.success(), "{}", output_text(&done));
    mgear_tests::same_file(&e.p("tgt.raw"), &e.p("big.raw"));
}

/// An ext4 file system made in image `name` (`size` bytes) and mounted at directory `dir`
/// (made here) through a loop device, which unmounts and detaches when dropped; `None` where
/// `mkfs.ext4` or the mount is not available.
fn mounted_ext4(e: &Env, name: &str, size: u64, dir: &str) -> Option<Loop> {
    let image = e.p(name);
    fs::File::create(&image).unwrap().set_len(size).unwrap();
    let made = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&image)
        .status()
        .is_ok_and(|s| s.success());
    if !made {
        return None;
    }
    let dev = Loop::attach(&image);
    fs::create_dir(e.p(dir)).unwrap();
    std::process::Command::new("mount")
        .arg(&dev.0)
        .arg(e.p(dir))
        .status()
        .is_ok_and(|s| s.success())
        .then_some(dev)
}

/// An ingest of generation 1 killed half-way, then the same command without `--generation`
/// (so of generation 2, a delta of a disk that shrank since): it said the `.partial` was
/// "an unfinished ingest of another capture ... not known" and to `rm` it, where its
/// ingest state says exactly which generation it is. Said from the state, as for a
/// generation of the same size; `--generation 1` finishes it, and `--force` (which said
/// "dropped, starts over" and was then refused for the `.partial`'s size) starts over.
#[test]
fn an_unfinished_ingest_of_another_sized_generation_is_named_from_its_state() {
    let e = Env::new();
    e.keygen();
    let medium = e.fat("m.img", "128MiB");
    random_disk(&e.p("disk.raw"), 32 << 20, 51);
    e.capture(&medium, "web01").source("disk.raw").ok();
    fs::copy(e.p("disk.raw"), e.p("gen1.raw")).unwrap();
    let f = fs::OpenOptions::new()
        .write(true)
        .open(e.p("disk.raw"))
        .unwrap();
    f.set_len(24 << 20).unwrap();
    drop(f);
    e.capture(&medium, "web01")
        .source("disk.raw")
        .arg("--delta")
        .ok();
    let ingest = || {
        e.ingest(&medium, "web01")
            .untrusted()
            .target("file:t.raw")
            .unsealed()
    };
    ingest()
        .args(&["--generation", "1"])
        .killed_after("2MiB/s", 1500);
    assert!(e.p("t.raw.partial").exists());
    let o = ingest().run();
    refused(&o, "records an unfinished ingest of generation 1");
    assert!(
        output_text(&o).contains("finish it with `--generation 1`"),
        "{}",
        output_text(&o)
    );
    // Asked for generation 2 by name: the hint replaces it (it said "added to this command",
    // and a second --generation is a usage error).
    let o = ingest().args(&["--generation", "2"]).run();
    refused(&o, "records an unfinished ingest of generation 1");
    assert!(
        output_text(&o).contains("in place of any --generation given"),
        "{}",
        output_text(&o)
    );
    let kept = fs::read(e.p("t.raw.partial")).unwrap();
    // --force starts over with generation 2 (the .partial resized to its disk).
    fs::copy(e.p("t.raw.partial"), e.p("kept.partial")).unwrap();
    let state = e.p("state/mgear/ingest");
    let saved: Vec<(std::path::PathBuf, Vec<u8>)> = fs::read_dir(&state)
        .unwrap()
        .map(|f| f.unwrap().path())
        .map(|p| {
            let b = fs::read(&p).unwrap();
            (p, b)
        })
        .collect();
    ingest().arg("--force").ok();
    mgear_tests::same_file(&e.p("t.raw"), &e.p("disk.raw"));
    // And --generation 1 finishes the one that was stopped.
    fs::remove_file(e.p("t.raw")).unwrap();
    fs::write(e.p("t.raw.partial"), &kept).unwrap();
    for (p, b) in &saved {
        fs::write(p, b).unwrap();
    }
    ingest().args(&["--generation", "1"]).ok();
    mgear_tests::same_file(&e.p("t.raw"), &e.p("gen1.raw"));
}

/// Two loop devices over disjoint byte ranges of one image (`losetup --offset --sizelimit`,
/// as partitions): the medium in one, the target in the other. The target was refused as
/// "the medium, or lies on it", --force or not, and then as "being written by another
/// ingest" (the medium's own lock). Written now, bit for bit; a window sharing bytes with
/// the medium's is still refused.
#[test]
fn a_loop_window_beside_the_mediums_in_one_image_is_a_target() {
    let e = Env::new();
    e.keygen();
    random_disk(&e.p("disk.raw"), 8 << 20, 61);
    let f = fs::File::create(e.p("whole.img")).unwrap();
    f.set_len(200 << 20).unwrap();
    drop(f);
    let window = |offset: &str, size: &str| {
        let out = std::process::Command::new("losetup")
            .args(["--find", "--show", "--offset", offset, "--sizelimit", size])
            .arg(e.p("whole.img"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", output_text(&out));
        Loop(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let medium_dev = window("1MiB", "100MiB");
    let target_dev = window("160MiB", "35MiB");
    let inside = window("50MiB", "20MiB");
    let medium = format!("fat:{}", medium_dev.0);
    e.ok(&["medium", "format", &medium]);
    e.capture(&medium, "p").source("disk.raw").ok();
    e.ingest(&medium, "p")
        .untrusted()
        .unsealed()
        .target(&format!("dev:{}", target_dev.0))
        .arg("--force")
        .ok();
    let mut got = vec![0u8; 8 << 20];
    std::io::Read::read_exact(&mut fs::File::open(&target_dev.0).unwrap(), &mut got).unwrap();
    assert!(
        got == fs::read(e.p("disk.raw")).unwrap(),
        "the target holds the disk"
    );
    refused(
        &e.ingest(&medium, "p")
            .untrusted()
            .unsealed()
            .target(&format!("dev:{}", inside.0))
            .arg("--force")
            .run(),
        "is the medium",
    );
}

/// Copies the `dir:` medium `from` to `to` with one byte of web01's first segment flipped at
/// `at` (an offset into the file, or from its end when negative).
fn damaged_copy(e: &Env, from: &str, to: &str, at: i64) {
    let (from, to) = (e.p(from), e.p(to));
    for (rel, _) in tree(&from) {
        let dst = to.join(&rel);
        fs::create_dir_all(dst.parent().unwrap()).unwrap();
        fs::copy(from.join(&rel), &dst).unwrap();
    }
    let seg = to.join("MGEAR/web01/G0001/SEG-00000");
    let mut bytes = fs::read(&seg).unwrap();
    let at = if at < 0 { bytes.len() as i64 + at } else { at } as usize;
    bytes[at] ^= 0x40;
    fs::write(&seg, bytes).unwrap();
}

/// A `--force` ingest over a good, finished volume that meets a bad record stops with the
/// volume untouched: it said "vol.raw is left unfinished" (an operator took the good volume
/// for a damaged one), and whether it named anything depended on which record was bad (the
/// first one said nothing of what it left). It names `vol.raw.partial` either way, and a
/// later run that keeps the finished volume says the `.partial` (decrypted data) is still
/// there and what to do with it (it said nothing).
#[test]
fn a_failed_forced_ingest_names_its_partial_and_leaves_the_good_volume() {
    let e = Env::new();
    e.keygen();
    fs::create_dir(e.p("m")).unwrap();
    random_disk(&e.p("disk.raw"), 6 << 20, 31);
    let disk = fs::read(e.p("disk.raw")).unwrap();
    e.capture("dir:m", "web01").source("disk.raw").ok();
    ingests_as(&e, "web01", "vol.raw", &disk);
    // Record 0's header (decrypted ahead of the others), then a record in the middle.
    damaged_copy(&e, "m", "first", 100);
    damaged_copy(&e, "m", "later", 3 << 20);
    for medium in ["dir:first", "dir:later"] {
        let o = e
            .ingest(medium, "web01")
            .untrusted()
            .unsealed()
            .target("file:vol.raw")
            .arg("--force")
            .run();
        let text = output_text(&o);
        assert_eq!(o.status.code(), Some(1), "{medium}: {text}");
        assert!(
            text.contains("vol.raw.partial (where the volume is written until it is verified")
                && text.contains("itself is not touched) is left unfinished"),
            "{medium}: {text}"
        );
        assert_eq!(fs::read(e.p("vol.raw")).unwrap(), disk, "{medium}");
        assert!(e.p("vol.raw.partial").exists(), "{medium}");
    }
    let o = e
        .ingest("dir:m", "web01")
        .untrusted()
        .unsealed()
        .target("file:vol.raw")
        .ok();
    let text = output_text(&o);
    assert!(text.contains("kept, not written again"), "{text}");
    assert!(
        text.contains("vol.raw.partial (an unfinished ingest into")
            && text.contains("and its resume state")
            && text.contains("remove both to give it up"),
        "{text}"
    );
    // What the note says: --force continues it and replaces the volume once verified.
    e.ingest("dir:m", "web01")
        .untrusted()
        .unsealed()
        .target("file:vol.raw")
        .arg("--force")
        .ok();
    assert!(!e.p("vol.raw.partial").exists());
    assert_eq!(fs::read(e.p("vol.raw")).unwrap(), disk);
}

/// A resumed ingest whose read-back finds that the volume no longer holds what an earlier run
/// wrote (here: overwritten while the ingest was stopped; in the field, a disk that loses
/// writes). The run fails (exit 1) and nothing is called verified; the resume state kept every
/// chunk as written, so each re-run, `--force` too, read the same bytes back and failed again
/// until the operator removed the state by hand. The state now forgets every chunk, and the
/// same command writes the whole volume again and verifies it.
#[test]
fn a_failed_read_back_is_written_again_by_the_same_command() {
    let e = Env::new();
    e.keygen();
    fs::create_dir(e.p("m")).unwrap();
    random_disk(&e.p("disk.raw"), 8 << 20, 41);
    let disk = fs::read(e.p("disk.raw")).unwrap();
    e.capture("dir:m", "web01").source("disk.raw").ok();
    let line = e
        .ingest("dir:m", "web01")
        .untrusted()
        .unsealed()
        .target("file:vol.raw");
    line.stopped_after("2MiB/s", 2500);
    // Garbage over the first MiB of what the stopped run wrote (chunk 0 is written last).
    let partial = e.p("vol.raw.partial");
    let mut bytes = fs::read(&partial).unwrap();
    assert!(
        bytes[1 << 20..2 << 20] == disk[1 << 20..2 << 20],
        "chunk 1 was written"
    );
    bytes[1 << 20..(1 << 20) + 4096].fill(0xa5);
    fs::write(&partial, bytes).unwrap();
    let o = line.run();
    let text = output_text(&o);
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(
        text.contains("read-back check failed: disk bytes 1048576..2097152 on vol.raw.partial")
            && text.contains(
                "now records no chunk as written: the same command writes the whole volume again"
            )
            // The next step is the re-run, not "do not use it" of data that did not check out.
            && text.contains("what to do: the medium's data checked out")
            && !text.contains("do not use it"),
        "{text}"
    );
    assert!(!e.p("vol.raw").exists());
    line.ok();
    assert_eq!(fs::read(e.p("vol.raw")).unwrap(), disk);
}

/// Two captures of one name onto two media at the same time, with one key cache (one host,
/// two engineers, or two disks named alike): each removed the other's key cache file
/// between its write and its rename as a killed run's leftover, and about one run in two
/// failed with "keys/NAME-ID.key: No such file". Each writer now holds its file until the
/// rename, and only a file nobody holds is a leftover.
#[test]
fn two_captures_of_one_name_at_once_share_a_key_cache() {
    let e = Env::new();
    e.keygen();
    random_disk(&e.p("d.raw"), 1 << 20, 23);
    for round in 0..6 {
        let media: Vec<String> = (0..2)
            .map(|i| {
                let m = format!("r{round}m{i}");
                fs::create_dir(e.p(&m)).unwrap();
                format!("dir:{m}")
            })
            .collect();
        let runs: Vec<_> = media
            .iter()
            .map(|m| e.capture(m, "keep").source("d.raw").spawn())
            .collect();
        for (m, run) in media.iter().zip(runs) {
            let out = run.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "round {round}, {m}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        for m in &media {
            let vol = format!("file:{}.raw", &m[4..]);
            e.ingest(m, "keep").untrusted().target(&vol).ok();
            assert_eq!(
                fs::read(e.p(&format!("{}.raw", &m[4..]))).unwrap(),
                fs::read(e.p("d.raw")).unwrap()
            );
        }
    }
}

/// `medium rm` and `capture --abort` on a medium behind a read-only loop device: the
/// environment to put right (exit 3, make it writable), not "the data did not check out: do
/// not use it" (exit 1) of an intact medium; nothing is removed, and once writable the same
/// command removes it.
#[test]
fn removing_from_a_read_only_medium_says_make_it_writable() {
    let e = Env::new();
    e.keygen();
    let m = e.fat("m.img", "64MiB");
    random_disk(&e.p("a.raw"), 4 << 20, 3);
    e.capture(&m, "web01").source("a.raw").ok();
    // Too big for what is left: an unfinished capture for --abort.
    random_disk(&e.p("big.raw"), 80 << 20, 4);
    let o = e
        .capture(&m, "big")
        .source("big.raw")
        .arg("--skip-space-check")
        .run();
    assert_eq!(o.status.code(), Some(3), "{}", output_text(&o));
    let out = std::process::Command::new("losetup")
        .args(["--find", "--show", "--read-only"])
        .arg(e.p("m.img"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    let ro = Loop(String::from_utf8_lossy(&out.stdout).trim().to_owned());
    let on_ro = format!("fat:{}", ro.0);
    for args in [
        &[
            "medium", "rm", "--medium", &on_ro, "--name", "web01", "--force",
        ][..],
        &["capture", "--abort", "--medium", &on_ro, "--name", "big"],
    ] {
        let o = e.run(args);
        let t = output_text(&o);
        assert_eq!(o.status.code(), Some(3), "{args:?}: {t}");
        assert!(
            t.contains("the medium is read-only")
                && t.contains("make the medium writable")
                && !t.contains("do not use it"),
            "{args:?}: {t}"
        );
    }
    drop(ro);
    let o = e.run(&["inspect", "--medium", &m]);
    let t = output_text(&o);
    assert!(
        t.contains("capture web01") && t.contains("capture big"),
        "{t}"
    );
    e.ok(&["medium", "rm", "--medium", &m, "--name", "web01", "--force"]);
    e.ok(&["capture", "--abort", "--medium", &m, "--name", "big"]);
}

/// An ingest into a `dev:` or NBD target that finished, run again (a script whose link
/// dropped after it completed): the volume is read back and kept (exit 0, `"kept": true`), as
/// a `file:` is. It was refused as "holds an MBR partition table: pass --force" (the table
/// this ingest wrote), and --force wrote the whole device again. Changed since, it is refused
/// (exit 1, nothing written); --force writes it again.
#[test]
fn a_finished_device_or_nbd_ingest_run_again_is_kept_after_a_read_back() {
    let e = Env::new();
    e.keygen();
    let m = e.fat("m.img", "64MiB");
    // A disk that starts with a partition table, which the guard knows.
    random_disk(&e.p("a.raw"), 6 << 20, 9);
    let mut d = fs::read(e.p("a.raw")).unwrap();
    d[510] = 0x55;
    d[511] = 0xaa;
    d[446 + 4] = 0x83;
    d[446 + 8] = 1;
    d[446 + 12] = 0x10;
    fs::write(e.p("a.raw"), &d).unwrap();
    e.capture(&m, "web01").source("a.raw").ok();
    fs::write(e.p("vol.img"), vec![0u8; 8 << 20]).unwrap();
    fs::write(e.p("nbd.raw"), vec![0u8; 8 << 20]).unwrap();
    let dev = Loop::attach(&e.p("vol.img"));
    let sock = e.p("v.sock");
    let _server = qemu_nbd(&["-t", "-f", "raw"], &sock, &e.p("nbd.raw"));
    for target in [
        format!("dev:{}", dev.0),
        format!("nbd+unix:///?socket={}", sock.display()),
    ] {
        e.ingest(&m, "web01").untrusted().target(&target).ok();
        let o = e
            .ingest(&m, "web01")
            .untrusted()
            .target(&target)
            .args(&["--json", "--volume-sha256"])
            .run();
        assert_eq!(o.status.code(), Some(0), "{target}: {}", output_text(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["kept"], true, "{target}: {v}");
        let sha = format!("{:x}", Sha256::digest(&d));
        assert_eq!(v["volume_sha256"], sha, "{target}: {v}");
        assert!(
            output_text(&o).contains("reads back bit for bit now"),
            "{target}: {}",
            output_text(&o)
        );
    }
    // A qcow2 volume kept: the digest of the disk it holds, read through qemu-nbd (it was the
    // container file's), over an odd-sized disk's own bytes (the image is whole sectors).
    let mut odd = d[..5 << 20].to_vec();
    odd.extend_from_slice(&[7u8; 123]);
    fs::write(e.p("odd.raw"), &odd).unwrap();
    e.capture(&m, "odd").source("odd.raw").ok();
    for run in ["first", "kept"] {
        let v = e
            .ingest(&m, "odd")
            .untrusted()
            .target("qcow2:odd.qcow2")
            .arg("--volume-sha256")
            .json();
        assert_eq!(v["kept"] == true, run == "kept", "{v}");
        assert_eq!(
            v["volume_sha256"],
            format!("{:x}", Sha256::digest(&odd)),
            "{run}: {v}"
        );
    }
    // Changed since (a machine ran from it): refused, then written again with --force.
    let f = fs::OpenOptions::new().write(true).open(&dev.0).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"changed", 3 << 20).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let target = format!("dev:{}", dev.0);
    let o = e.ingest(&m, "web01").untrusted().target(&target).run();
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    // Its next step is about the volume, not "the data did not check out: do not use it".
    assert!(
        output_text(&o).contains("does not hold it any more")
            && output_text(&o).contains("the volume changed since it was ingested")
            && !output_text(&o).contains("do not use it"),
        "{}",
        output_text(&o)
    );
    e.ingest(&m, "web01")
        .untrusted()
        .target(&target)
        .arg("--force")
        .ok();
    let back = fs::read(&dev.0).unwrap();
    assert_eq!(&back[..d.len()], &d[..]);
}

/// `ingest --boot` with a --wait-for that proves nothing, or --timeout 0: refused before
/// anything is decrypted or written (it was refused after the volume was installed, and the
/// report said "nothing verified" of a verified volume).
#[test]
fn an_ingest_boot_that_could_prove_nothing_is_refused_before_writing() {
    let e = Env::new();
    e.keygen();
    let m = e.fat("m.img", "64MiB");
    random_disk(&e.p("a.raw"), 2 << 20, 5);
    e.capture(&m, "web01").source("a.raw").ok();
    for extra in [&["--wait-for", ".*"][..], &["--timeout", "0"]] {
        let o = e
            .ingest(&m, "web01")
            .untrusted()
            .target("file:v.raw")
            .arg("--boot")
            .args(extra)
            .run();
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {}", output_text(&o));
        assert!(!e.p("v.raw").exists() && !e.p("v.raw.partial").exists());
    }
}

/// An ingest into a loop device killed half-way, its file attached again under another
/// number and ingested there to the end: the volume is finished and verified, and `boot`
/// takes it (the first run's marker, naming the old device, made it refuse the volume for
/// good, and no ingest cleared it).
#[test]
fn a_device_finished_under_another_name_is_not_held_by_its_old_marker() {
    let e = Env::new();
    e.keygen();
    let m = e.fat("m.img", "64MiB");
    random_disk(&e.p("a.raw"), 8 << 20, 11);
    e.capture(&m, "web01").source("a.raw").ok();
    fs::write(e.p("vol.img"), vec![0u8; 10 << 20]).unwrap();
    let first = Loop::attach(&e.p("vol.img"));
    let mut child = e
        .ingest(&m, "web01")
        .untrusted()
        .target(&format!("dev:{}", first.0))
        .args(&["--rate-limit", "2MiB/s"])
        .command()
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    child.kill().unwrap();
    child.wait().unwrap();
    // Another device takes its number; the file comes back under a new one.
    fs::write(e.p("dummy.img"), vec![0u8; 1 << 20]).unwrap();
    drop(first);
    let _dummy = Loop::attach(&e.p("dummy.img"));
    let second = Loop::attach(&e.p("vol.img"));
    e.ingest(&m, "web01")
        .untrusted()
        .target(&format!("dev:{}", second.0))
        .ok();
    let o = e.run(&[
        "boot",
        "--target",
        &format!("dev:{}", second.0),
        "--check-profile",
        "generic",
    ]);
    assert!(
        !output_text(&o).contains("was not finished"),
        "{}",
        output_text(&o)
    );
    let back = fs::read(&second.0).unwrap();
    assert_eq!(&back[..8 << 20], &fs::read(e.p("a.raw")).unwrap()[..]);
}

/// A medium that refuses writes (a read-only loop device, as a write-protected stick is) is
/// refused by the plan as by the run, exit 3 with the way to make it writable: the dry run
/// said "fits", exit 0, of a capture that then stopped at its first write. A directory inside
/// a `dir:` medium's `MGEAR/` (the medium's root given one level too deep) is no medium: a
/// capture there wrote into the other medium's captures, which verify then called damaged.
#[test]
fn a_read_only_medium_or_one_inside_another_is_refused_before_the_plan() {
    let e = Env::new();
    e.keygen();
    random_disk(&e.p("d.raw"), 2 << 20, 9);
    e.fat("m.img", "40MiB");
    let before = tree(&e.p("m.img"));
    let out = std::process::Command::new("losetup")
        .args(["--find", "--show", "--read-only"])
        .arg(e.p("m.img"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    let lo = Loop(String::from_utf8_lossy(&out.stdout).trim().to_owned());
    let ro = format!("fat:{}", lo.0);
    for dry in [true, false] {
        let mut line = e.capture(&ro, "web01").source("d.raw");
        if dry {
            line = line.arg("--dry-run");
        }
        let o = line.run();
        assert_eq!(o.status.code(), Some(3), "{}", output_text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(&format!(
                "medium {ro} refuses writes (the device is read-only)"
            )) && err.contains("blockdev --setrw"),
            "{}",
            output_text(&o)
        );
    }
    // A format of it says the same (it was "wiping old signatures: Operation not permitted"
    // with advice about permissions).
    let o = e.run(&["medium", "format", &ro, "--force"]);
    assert_eq!(o.status.code(), Some(3), "{}", output_text(&o));
    assert!(
        output_text(&o)
            .contains("refuses writes (the device is read-only): it cannot be formatted")
            && output_text(&o).contains("without -r"),
        "{}",
        output_text(&o)
    );
    drop(lo);
    assert_eq!(
        tree(&e.p("m.img")),
        before,
        "a refused capture changed the medium"
    );
    // An immutable image (`chattr +i`, where the file system has the attribute): the plan
    // said "fits" of it, and the run's refusal said "reconnect it".
    struct Mutable(std::path::PathBuf);
    impl Drop for Mutable {
        fn drop(&mut self) {
            let _ = std::process::Command::new("chattr")
                .arg("-i")
                .arg(&self.0)
                .status();
        }
    }
    let immutable = std::process::Command::new("chattr")
        .arg("+i")
        .arg(e.p("m.img"))
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if immutable {
        let _undo = Mutable(e.p("m.img"));
        for dry in [true, false] {
            let mut line = e.capture("fat:m.img", "web01").source("d.raw");
            if dry {
                line = line.arg("--dry-run");
            }
            let o = line.run();
            assert_eq!(o.status.code(), Some(3), "{}", output_text(&o));
            assert!(output_text(&o).contains("chattr -i"), "{}", output_text(&o));
        }
    }

    fs::create_dir(e.p("dm")).unwrap();
    e.capture("dir:dm", "web01").source("d.raw").ok();
    let before = tree(&e.p("dm"));
    // The medium's MGEAR/ through a bind mount too (the path says nothing, what it holds
    // does).
    fs::create_dir(e.p("bm")).unwrap();
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let bound = std::process::Command::new("mount")
        .args(["--bind", &e.s("dm/MGEAR"), &e.s("bm")])
        .status()
        .is_ok_and(|s| s.success());
    let unmount = bound.then(|| Unmount(e.p("bm")));
    let mut inner = vec!["dir:dm/MGEAR", "dir:dm/MGEAR/web01", "dir:dm/./MGEAR/new"];
    if bound {
        inner.push("dir:bm");
    }
    for inner in inner {
        let o = e.capture(inner, "web02").source("d.raw").run();
        refused(&o, "medium's own directory");
        let o = e.run(&["inspect", "--medium", inner]);
        refused(&o, "medium's own directory");
    }
    drop(unmount);
    assert_eq!(
        tree(&e.p("dm")),
        before,
        "a refused capture changed the medium"
    );
    // A medium its owner named MGEAR is one.
    fs::create_dir(e.p("MGEAR")).unwrap();
    e.capture("dir:MGEAR", "web03").source("d.raw").ok();
    e.ingest("dir:MGEAR", "web03")
        .untrusted()
        .target("file:v.raw")
        .ok();
    assert_eq!(
        fs::read(e.p("v.raw")).unwrap(),
        fs::read(e.p("d.raw")).unwrap()
    );
}

/// The same command from another working directory (`--source ../disk.raw`), or the disk
/// through a symbolic link, names the disk the capture was started from: the resume goes on
/// (it was refused as "started from /w/disk.raw, and this run reads /w/other/../disk.raw",
/// another disk's words), and the medium keeps the name it was started under.
#[test]
fn a_resume_that_spells_the_same_disk_another_way_goes_on() {
    let e = Env::new();
    e.keygen();
    random_disk(&e.p("disk.raw"), 6 << 20, 45);
    fs::create_dir(e.p("m")).unwrap();
    fs::create_dir(e.p("other")).unwrap();
    std::os::unix::fs::symlink(e.p("disk.raw"), e.p("link.raw")).unwrap();
    for (k, spelled) in ["other/../disk.raw", "link.raw"].into_iter().enumerate() {
        let name = format!("web0{k}");
        e.capture("dir:m", &name)
            .source("disk.raw")
            .killed_after("2MiB/s", 1500);
        let o = e.capture("dir:m", &name).source(spelled).ok();
        assert!(output_text(&o).contains("resumed"), "{}", output_text(&o));
        ingests_as(
            &e,
            &name,
            &format!("{name}.raw"),
            &fs::read(e.p("disk.raw")).unwrap(),
        );
    }
    let i = e.json(&["inspect", "--medium", "dir:m"]);
    assert!(
        !i.to_string().contains("..") && !i.to_string().contains("link.raw"),
        "{i}"
    );
}

/// `keys forget` while a capture that uses the key runs: refused (exit 3, naming the
/// capture), where it removed the key under the running capture, which finished with exit
/// 0 and left every later delta refused for want of its key. Once it ends, forgotten.
#[test]
fn a_key_in_use_by_a_running_capture_is_not_forgotten() {
    let e = Env::new();
    e.keygen();
    random_disk(&e.p("disk.raw"), 8 << 20, 46);
    fs::create_dir(e.p("m")).unwrap();
    let mut run = e
        .capture("dir:m", "web01")
        .source("disk.raw")
        .args(&["--rate-limit", "2MiB/s"])
        .spawn();
    // Until the capture has its key and is writing chunks.
    let t0 = std::time::Instant::now();
    loop {
        let k = e.json(&["keys", "list"]);
        if k["keys"].as_array().is_some_and(|a| !a.is_empty()) && t0.elapsed().as_millis() > 1200 {
            break;
        }
        assert!(t0.elapsed().as_secs() < 20, "no key cached: {k}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let o = e.run(&["keys", "forget", "--name", "web01"]);
    assert_eq!(o.status.code(), Some(3), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("the data key of capture web01 is in use by pid"),
        "{}",
        output_text(&o)
    );
    assert!(run.wait().unwrap().success());
    // The delta the forgotten key would have refused.
    e.capture("dir:m", "web01")
        .source("disk.raw")
        .arg("--delta")
        .ok();
    e.ok(&["keys", "forget", "--name", "web01"]);
    let k = e.json(&["keys", "list"]);
    assert_eq!(k["keys"], serde_json::json!([]), "{k}");
}

/// A volume that holds a newer generation of the disk (ingested, or kept up to date by a
/// serve since) is not written back to an older one on `--force`'s say-so unasked: the
/// refusal says NEWER (it offered `--force` as for any other file). And the record of an
/// unfinished ingest whose `.partial` was removed by hand is dropped, not sent back to.
#[test]
fn an_older_generation_is_not_offered_over_a_newer_and_a_removed_partial_is_forgotten() {
    let e = Env::new();
    e.keygen();
    random_disk(&e.p("d.raw"), 6 << 20, 47);
    fs::create_dir(e.p("m")).unwrap();
    e.capture("dir:m", "web01").source("d.raw").ok();
    // The first trip's medium, kept: it holds generation 1 only.
    let cp = std::process::Command::new("cp")
        .arg("-a")
        .arg(e.p("m"))
        .arg(e.p("trip1"))
        .status()
        .unwrap();
    assert!(cp.success());
    let first = fs::read(e.p("d.raw")).unwrap();
    let mut d = first.clone();
    d[2 << 20] ^= 0xff;
    fs::write(e.p("d.raw"), &d).unwrap();
    e.capture("dir:m", "web01")
        .source("d.raw")
        .arg("--delta")
        .ok();
    ingests_as(&e, "web01", "v.raw", &d);
    let before = fs::read(e.p("v.raw")).unwrap();
    let o = e
        .ingest("dir:m", "web01")
        .untrusted()
        .target("file:v.raw")
        .args(&["--generation", "1"])
        .run();
    refused(&o, "NEWER than the generation 1 asked for");
    assert_eq!(fs::read(e.p("v.raw")).unwrap(), before);
    // From the first trip's medium, which does not hold generation 2: the same (it read "a
    // capture this medium does not hold", and --force rolled the volume back unsaid).
    let o = e
        .ingest("dir:trip1", "web01")
        .untrusted()
        .target("file:v.raw")
        .run();
    refused(
        &o,
        "holds web01 generation 2, NEWER than the generation 1 asked for",
    );
    assert!(
        output_text(&o).contains("this medium does not hold that generation"),
        "{}",
        output_text(&o)
    );
    assert_eq!(fs::read(e.p("v.raw")).unwrap(), before);
    let o = e
        .ingest("dir:trip1", "web01")
        .untrusted()
        .target("file:v.raw")
        .arg("--force")
        .ok();
    assert!(
        output_text(&o).contains(
            "--force: v.raw held web01 generation 2, ingested on this host: the older \
             generation 1 is written back over it"
        ),
        "{}",
        output_text(&o)
    );
    assert!(fs::read(e.p("v.raw")).unwrap() == first);

    // An ingest of generation 2 stopped part-way; its .partial removed by hand.
    e.ingest("dir:m", "web01")
        .untrusted()
        .target("file:w.raw")
        .killed_after("1MiB/s", 2500);
    assert!(e.p("w.raw.partial").exists());
    fs::remove_file(e.p("w.raw.partial")).unwrap();
    let o = e
        .ingest("dir:m", "web01")
        .untrusted()
        .target("file:w.raw")
        .args(&["--generation", "1"])
        .ok();
    assert!(
        output_text(&o).contains("which is gone: that record is dropped"),
        "{}",
        output_text(&o)
    );
}

/// A `dev:` ingest finished, written again with `--force` and killed part-way: the same
/// command without `--force` resumes that unfinished ingest (it read the device back against
/// the first ingest's record and refused, exit 1, "does not hold it any more").
#[test]
fn a_killed_forced_ingest_into_a_device_resumes() {
    let e = Env::new();
    e.keygen();
    random_disk(&e.p("d.raw"), 8 << 20, 48);
    fs::create_dir(e.p("m")).unwrap();
    e.capture("dir:m", "web01").source("d.raw").ok();
    // Finished, written again with --force and killed, then the same command: it resumes.
    let resumes = |target: &str, holds: &Path| {
        let ingest = || e.ingest("dir:m", "web01").untrusted().target(target);
        ingest().arg("--force").killed_after("1MiB/s", 2500);
        let o = ingest().ok();
        assert!(
            !output_text(&o).contains("does not hold it any more"),
            "{target}: {}",
            output_text(&o)
        );
        let v = fs::read(holds).unwrap();
        assert_eq!(
            &v[..8 << 20],
            &fs::read(e.p("d.raw")).unwrap()[..],
            "{target}"
        );
    };
    fs::write(e.p("vol.img"), vec![0u8; 12 << 20]).unwrap();
    let dev = Loop::attach(&e.p("vol.img"));
    let target = format!("dev:{}", dev.0);
    e.ingest("dir:m", "web01").untrusted().target(&target).ok();
    resumes(&target, Path::new(&dev.0));
    // The same into an NBD export (it was refused there, exit 1, and only a re-run with
    // --force resumed it).
    fs::write(e.p("exp.img"), vec![0u8; 12 << 20]).unwrap();
    let sock = e.p("nb.sock");
    let _server = qemu_nbd(&["-t", "-f", "raw"], &sock, &e.p("exp.img"));
    let target = format!("nbd+unix:///?socket={}", sock.display());
    e.ingest("dir:m", "web01").untrusted().target(&target).ok();
    fs::write(e.p("exp.img"), vec![0u8; 12 << 20]).unwrap();
    resumes(&target, &e.p("exp.img"));
}

/// A directory given to `boot --target` read as a disk ("Is a directory (os error 21)", exit
/// 3, "reconnect it"), and a small file given to `medium format --force` was said to be of
/// its size in whole sectors (a 178-byte key file "is 0 B").
#[test]
fn a_directory_to_boot_and_a_small_file_to_format_are_named_as_they_are() {
    let e = Env::new();
    fs::create_dir(e.p("adir")).unwrap();
    for t in ["file:adir", "adir"] {
        let o = e.run(&["boot", "--target", t, "--wait-for", "login:"]);
        assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
        assert!(
            output_text(&o).contains("adir is a directory, not a disk"),
            "{}",
            output_text(&o)
        );
    }
    fs::write(e.p("small"), vec![7u8; 700]).unwrap();
    let o = e.run(&["medium", "format", "fat:small", "--force"]);
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("small is 700 B: a FAT32 medium needs at least"),
        "{}",
        output_text(&o)
    );
    assert_eq!(fs::read(e.p("small")).unwrap(), vec![7u8; 700]);
}

/// A device (or file) another process holds open for writing (a running VM's disk: QEMU
/// opens a device without O_EXCL) was written with `--force` under it; a raw data disk this
/// host finished another disk's ingest into was written over without a word (only a file
/// system or partition table was seen), and a device whose own record says it holds a newer
/// generation was called changed ("does not hold it any more", exit 1).
/// Ingest disk `disk` of set `name` on the `dir:m` medium into `target`, untrusted.
fn ingest_disk(e: &Env, name: &str, target: &str, disk: &str, force: bool) -> std::process::Output {
    let l = e
        .ingest("dir:m", name)
        .untrusted()
        .args(&["--disk", disk])
        .target(target);
    if force {
        l.arg("--force").run()
    } else {
        l.run()
    }
}

/// An NBD export this host finished another disk into (a typo in the export's name) was
/// written over without `--force`, exit 0, where a device or a file was refused.
#[test]
fn an_export_holding_another_ingested_disk_is_refused() {
    let e = Env::new();
    e.keygen();
    random_disk(&e.p("root.raw"), 4 << 20, 33);
    random_disk(&e.p("data.raw"), 4 << 20, 34);
    std::fs::create_dir(e.p("m")).unwrap();
    e.capture("dir:m", "m4")
        .sources(&["root.raw", "data.raw"])
        .ok();
    fs::write(e.p("n.img"), vec![0u8; 4 << 20]).unwrap();
    let sock = e.p("n.sock");
    let _server = qemu_nbd(&["-t", "-f", "raw"], &sock, &e.p("n.img"));
    let target = format!("nbd+unix:///?socket={}", sock.display());
    let ingest = |disk: &str, force: bool| ingest_disk(&e, "m4", &target, disk, force);
    let o = ingest("1", false);
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    let o = ingest("0", false);
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("holds m4.d1 generation 1, ingested and verified on this host")
            && output_text(&o).contains("the export meant for this disk"),
        "{}",
        output_text(&o)
    );
    assert_eq!(
        fs::read(e.p("n.img")).unwrap(),
        fs::read(e.p("data.raw")).unwrap()
    );
    // Meant: --force writes it.
    let o = ingest("0", true);
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    assert_eq!(
        fs::read(e.p("n.img")).unwrap(),
        fs::read(e.p("root.raw")).unwrap()
    );
}

#[test]
fn a_device_held_by_another_process_or_holding_another_ingested_disk_is_refused() {
    let e = Env::new();
    e.keygen();
    random_disk(&e.p("root.raw"), 4 << 20, 31);
    random_disk(&e.p("data.raw"), 4 << 20, 32);
    std::fs::create_dir(e.p("m")).unwrap();
    e.capture("dir:m", "m2")
        .sources(&["root.raw", "data.raw"])
        .ok();
    fs::write(e.p("d.img"), vec![0u8; 4 << 20]).unwrap();
    let dev = Loop::attach(&e.p("d.img"));
    let target = format!("dev:{}", dev.0);
    let ingest = |disk: &str, force: bool| ingest_disk(&e, "m2", &target, disk, force);
    let o = ingest("1", false);
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    let o = ingest("0", false);
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("holds m2.d1 generation 1, ingested and verified on this host"),
        "{}",
        output_text(&o)
    );
    assert_eq!(
        fs::read(e.p("d.img")).unwrap(),
        fs::read(e.p("data.raw")).unwrap()
    );
    // Held open for writing by another process: refused, --force too.
    for (t, path) in [
        (target.clone(), dev.0.clone()),
        (format!("file:{}", e.s("d.img")), e.s("d.img")),
    ] {
        let mut holder = std::process::Command::new("sh")
            .arg("-c")
            .arg("exec 3<>\"$1\"; exec sleep 30")
            .arg("sh")
            .arg(&path)
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        let o = e
            .ingest("dir:m", "m2")
            .untrusted()
            .args(&["--disk", "0", "--force"])
            .target(&t)
            .run();
        let _ = holder.kill();
        let _ = holder.wait();
        assert_eq!(o.status.code(), Some(2), "{t}: {}", output_text(&o));
        assert!(
            output_text(&o).contains("is open for writing by process"),
            "{}",
            output_text(&o)
        );
    }
    assert_eq!(
        fs::read(e.p("d.img")).unwrap(),
        fs::read(e.p("data.raw")).unwrap()
    );
    // Held for reading by a virtual machine (a proof boot's guest opens its disk read-only
    // with -snapshot): refused too, --force too; it wrote the disk under the booting guest.
    {
        std::fs::copy("/bin/sleep", e.p("qemu-system-fake")).unwrap();
        for t in [target.clone(), format!("file:{}", e.s("d.img"))] {
            let path = t.split_once(':').unwrap().1.to_string();
            let mut vm = std::process::Command::new("sh")
                .arg("-c")
                .arg("exec 3<\"$1\"; exec \"$2\" 30")
                .arg("sh")
                .arg(&path)
                .arg(e.p("qemu-system-fake"))
                .spawn()
                .unwrap();
            std::thread::sleep(std::time::Duration::from_millis(300));
            let o = e
                .ingest("dir:m", "m2")
                .untrusted()
                .args(&["--disk", "0", "--force"])
                .target(&t)
                .run();
            let _ = vm.kill();
            let _ = vm.wait();
            assert_eq!(o.status.code(), Some(2), "{t}: {}", output_text(&o));
            assert!(
                output_text(&o).contains("is open in a virtual machine"),
                "{}",
                output_text(&o)
            );
        }
        assert_eq!(
            fs::read(e.p("d.img")).unwrap(),
            fs::read(e.p("data.raw")).unwrap()
        );
    }
    // Written over on purpose; then the other disk is refused in turn, by name.
    let o = ingest("0", true);
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    let o = ingest("1", false);
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("holds m2.d0 generation 1"),
        "{}",
        output_text(&o)
    );
}

/// A loop device over a file this host finished a `file:` ingest into: refused as that file
/// is, by what it holds (it was written over without a word: the file's record names its
/// inode, which the device's own records never saw); with --force, written.
#[test]
fn a_loop_device_over_an_ingested_file_is_refused_as_the_file_is() {
    let e = Env::new();
    e.keygen();
    random_disk(&e.p("root.raw"), 4 << 20, 41);
    random_disk(&e.p("data.raw"), 4 << 20, 42);
    std::fs::create_dir(e.p("m")).unwrap();
    e.capture("dir:m", "m3")
        .sources(&["root.raw", "data.raw"])
        .ok();
    let ingest = |disk: &str, target: &str, force: bool| {
        let l = e
            .ingest("dir:m", "m3")
            .untrusted()
            .args(&["--disk", disk])
            .target(target);
        if force {
            l.arg("--force").run()
        } else {
            l.run()
        }
    };
    let o = ingest("0", &format!("file:{}", e.s("v.raw")), false);
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    let dev = Loop::attach(&e.p("v.raw"));
    let o = ingest("1", &format!("dev:{}", dev.0), false);
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("holds m3.d0 generation 1, ingested and verified on this host"),
        "{}",
        output_text(&o)
    );
    assert_eq!(
        fs::read(e.p("v.raw")).unwrap(),
        fs::read(e.p("root.raw")).unwrap()
    );
    let o = ingest("1", &format!("dev:{}", dev.0), true);
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    drop(dev);
    assert_eq!(
        fs::read(e.p("v.raw")).unwrap(),
        fs::read(e.p("data.raw")).unwrap()
    );
}

/// A stopped capture whose index part was damaged since, run again: "index part fails
/// authentication" with the found-failure hint "do not use it", where the way on is to
/// remove the unfinished generation and capture again.
#[test]
fn a_resume_over_a_damaged_index_part_names_the_abort() {
    let e = Env::new();
    e.keygen();
    random_disk(&e.p("disk.raw"), 16 << 20, 87);
    fs::create_dir(e.p("m")).unwrap();
    let line = e.capture("dir:m", "web09").source("disk.raw");
    line.killed_after("2MiB/s", 2500);
    let ipart = e.p("m/MGEAR/web09/G0001/IPART");
    let mut b = fs::read(&ipart).unwrap();
    assert!(b.len() > 100, "a checkpoint was written");
    b[100] ^= 0xff;
    fs::write(&ipart, b).unwrap();
    let o = line.run();
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("cannot be resumed")
            && output_text(&o).contains("mgear capture --abort --medium dir:m --name web09"),
        "{}",
        output_text(&o)
    );
    e.ok(&["capture", "--abort", "--medium", "dir:m", "--name", "web09"]);
    line.ok();
}
