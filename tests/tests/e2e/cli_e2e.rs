//! End-to-end scenarios for the `mgear` CLI: keygen, medium format,
//! capture, verify, ingest, inspect, driven through the real binary.
//!
//! Sizes are small (a few MiB) so the suite stays quick; the SIGKILL and
//! medium-full scenarios use a rate limit or a filler file so that the
//! interruption lands mid-way.

use mgear_tests::{fsck_clean, output_text, qemu_nbd, same_file, Env, Line, Loop};
use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, RngCore, SeedableRng};

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A disk with zeros, text, random data and a repeated block (for dedup).
fn make_disk(path: &Path, mib: usize, seed: u64) {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let mut disk = vec![0u8; mib << 20];
    let mut repeated = vec![0u8; 1 << 20];
    rng.fill_bytes(&mut repeated);
    for (i, c) in disk.chunks_mut(1 << 20).enumerate() {
        match i % 4 {
            0 => rng.fill_bytes(c),
            1 => {}
            2 => {
                for (j, b) in c.iter_mut().enumerate() {
                    *b = b"the quick brown fox jumps over the lazy dog\n"[j % 44];
                }
            }
            _ => c.copy_from_slice(&repeated[..c.len()]),
        }
    }
    // A boot-sector-like first chunk so "chunk 0 last" matters.
    disk[510] = 0x55;
    disk[511] = 0xaa;
    fs::write(path, disk).expect("write disk");
}

fn random_disk(path: &Path, bytes: usize, seed: u64) {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let mut disk = vec![0u8; bytes];
    rng.fill_bytes(&mut disk);
    fs::write(path, disk).expect("write disk");
}

const INGEST_UNSEALED: &str = "--allow-unsealed";

#[test]
fn cli_keygen_permissions_and_refusal() {
    use std::os::unix::fs::PermissionsExt;
    let e = Env::new();
    e.keygen();
    let mode = fs::metadata(e.p("target.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "secret key must be 0600");
    let key = fs::read_to_string(e.p("target.key")).unwrap();
    assert!(
        key.lines().any(|l| l.starts_with("AGE-SECRET-KEY-1")),
        "{key}"
    );
    let pubkey = fs::read_to_string(e.p("target.pub")).unwrap();
    assert!(pubkey.starts_with("age1"), "{pubkey}");
    let again = e.run(&["keygen", "--out", "target.key"]);
    assert_eq!(
        again.status.code(),
        Some(2),
        "overwriting a key must be refused"
    );
    assert_eq!(fs::read_to_string(e.p("target.key")).unwrap(), key);

    // The capture names the key it encrypted to, for the field engineer to compare with
    // the target's target.pub before shipping (a wrong one was found only at the target).
    make_disk(&e.p("disk.raw"), 2, 3);
    let m = e.fat("medium.img", "40MiB");
    let c = e.capture(&m, "web01").source("disk.raw").run();
    assert_eq!(c.status.code(), Some(0), "{}", output_text(&c));
    assert!(
        stdout(&c).contains(&format!("encrypted to   {}", pubkey.trim())),
        "{}",
        stdout(&c)
    );
    // A key others can read is used, with a warning, once.
    fs::set_permissions(e.p("target.key"), fs::Permissions::from_mode(0o644)).unwrap();
    let v = e.run(&[
        "verify",
        "--medium",
        &m,
        "--identity",
        "target.key",
        "--allow-untrusted",
    ]);
    assert_eq!(v.status.code(), Some(0), "{}", output_text(&v));
    assert_eq!(
        stderr(&v).matches("can be read by other users").count(),
        1,
        "{}",
        stderr(&v)
    );
    // ... and listed in `warnings` of --json and the report, as every warning printed is.
    let i = e
        .ingest(&m, "web01")
        .untrusted()
        .target("file:out.raw")
        .args(&["--report", "ingest.json"])
        .json();
    let listed = |v: &serde_json::Value| {
        v["warnings"].as_array().is_some_and(|w| {
            w.iter()
                .any(|w| w.as_str().unwrap().contains("target.key can be read"))
        })
    };
    assert!(listed(&i), "{i}");
    let r: serde_json::Value =
        serde_json::from_slice(&fs::read(e.p("ingest.json")).unwrap()).unwrap();
    assert!(listed(&r["result"]), "{r}");
    // --force replaces it and keeps the old one aside: shipments encrypted to it are not lost.
    let forced = e.run(&["keygen", "--out", "target.key", "--force"]);
    assert_eq!(forced.status.code(), Some(0), "{}", output_text(&forced));
    assert!(
        stderr(&forced).contains("can no longer be opened"),
        "{}",
        stderr(&forced)
    );
    assert_eq!(fs::read_to_string(e.p("target.key.replaced")).unwrap(), key);
    let v = e.run(&[
        "verify",
        "--medium",
        &m,
        "--identity",
        "target.key.replaced",
        "--allow-untrusted",
    ]);
    assert_eq!(v.status.code(), Some(0), "{}", output_text(&v));
    // A site's signing key encrypts nothing: its replacement is said as what it breaks, pins.
    e.ok(&["keygen", "--signing", "--out", "site.key"]);
    let forced = e.run(&["keygen", "--signing", "--out", "site.key", "--force"]);
    assert_eq!(forced.status.code(), Some(0), "{}", output_text(&forced));
    assert!(
        stderr(&forced).contains("pinned the old public key")
            && !stderr(&forced).contains("encrypted"),
        "{}",
        stderr(&forced)
    );
}

#[test]
fn cli_fat_round_trip_bit_identical() {
    let e = Env::new();
    e.keygen();
    make_disk(&e.p("disk.raw"), 9, 1);
    let m = e.fat("medium.img", "64MiB");
    let c = e.capture(&m, "web01").source("disk.raw").json();
    assert_eq!(c["generation"], 1);
    assert!(c["zero_chunks"].as_u64().unwrap() >= 2, "{c}");
    assert!(c["dedup_chunks"].as_u64().unwrap() >= 1, "{c}");
    assert!(c["stored_bytes"].as_u64().unwrap() < 9 << 20, "{c}");
    // The CPU the capture cost the source host is reported (share of one core).
    let (cpu, share) = (
        c["cpu_seconds"].as_f64().unwrap(),
        c["cpu_share"].as_f64().unwrap(),
    );
    assert!(cpu > 0.0 && share > 0.0 && share.is_finite(), "{c}");
    fsck_clean(&e.p("medium.img"));

    let v = e.json(&["verify", "--medium", &m]);
    assert_eq!(v["ok"], true, "{v}");
    let v = e.json(&[
        "verify",
        "--allow-untrusted",
        "--medium",
        &m,
        "--identity",
        "target.key",
    ]);
    assert_eq!(
        (v["ok"].clone(), v["keyed"].clone()),
        (true.into(), true.into()),
        "{v}"
    );

    let i = e.json(&["inspect", "--medium", &m]);
    assert_eq!(i["captures"][0]["name"], "web01");
    assert_eq!(i["captures"][0]["generations"][0]["state"], "complete");

    let r = e
        .ingest(&m, "web01")
        .untrusted()
        .target("file:vol.raw")
        .unsealed()
        .json();
    assert_eq!(r["verified"], true);
    same_file(&e.p("disk.raw"), &e.p("vol.raw"));
    assert!(!e.p("vol.raw.partial").exists());
    // Sparse: zero chunks were not written.
    use std::os::unix::fs::MetadataExt;
    let blocks = fs::metadata(e.p("vol.raw")).unwrap().blocks() * 512;
    assert!(
        blocks < 9 << 20,
        "vol.raw is not sparse ({blocks} bytes allocated)"
    );
    fsck_clean(&e.p("medium.img"));
}

#[test]
fn cli_direct_capture_ingests_without_a_seal_and_says_so() {
    let e = Env::new();
    e.keygen();
    make_disk(&e.p("disk.raw"), 2, 2);
    let m = e.fat("medium.img", "40MiB");
    e.capture(&m, "web01").source("disk.raw").ok();
    let out = e
        .ingest(&m, "web01")
        .untrusted()
        .target("file:vol.raw")
        .run();
    // Unsigned and written without an appliance: nothing proves its origin,
    // so ingest goes ahead only with --allow-untrusted and says so loudly
    // (pinned trust is played in tests/trust_e2e.rs).
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("WARNING: --allow-untrusted"),
        "{}",
        stderr(&out)
    );
    same_file(&e.p("disk.raw"), &e.p("vol.raw"));
}

#[test]
fn cli_dir_medium_and_passphrase() {
    let e = Env::new();
    make_disk(&e.p("disk.raw"), 5, 3);
    fs::create_dir(e.p("mnt")).unwrap();
    fs::write(e.p("pw"), "correct horse battery staple\n").unwrap();
    fs::write(e.p("badpw"), "wrong\n").unwrap();
    e.ok(&[
        "capture",
        "--source",
        "disk.raw",
        "--medium",
        "dir:mnt",
        "--name",
        "db-2",
        "--passphrase-file",
        "pw",
        "--passphrase-work-factor",
        "10",
    ]);
    assert!(e.p("mnt/MGEAR").is_dir());
    let v = e.json(&[
        "verify",
        "--allow-untrusted",
        "--medium",
        "dir:mnt",
        "--passphrase-file",
        "pw",
    ]);
    assert_eq!(v["ok"], true, "{v}");
    let bad = e.run(&[
        "ingest",
        "--allow-untrusted",
        "--medium",
        "dir:mnt",
        "--name",
        "db-2",
        "--passphrase-file",
        "badpw",
        "--target",
        "file:v.raw",
        INGEST_UNSEALED,
    ]);
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    assert!(
        stderr(&bad).contains("the passphrase in badpw does not open capture db-2"),
        "{}",
        stderr(&bad)
    );
    // It says which slots the capture has and what to try.
    assert!(stderr(&bad).contains("passphrase slot"), "{}", stderr(&bad));
    assert!(
        stderr(&bad).contains("--passphrase-file with the file given at capture"),
        "{}",
        stderr(&bad)
    );
    e.ok(&[
        "ingest",
        "--allow-untrusted",
        "--medium",
        "dir:mnt",
        "--name",
        "db-2",
        "--passphrase-file",
        "pw",
        "--target",
        "file:v.raw",
        INGEST_UNSEALED,
    ]);
    same_file(&e.p("disk.raw"), &e.p("v.raw"));
    // A delta from a host without the key cache, the wrong passphrase given: told as ingest
    // tells it (it said only "this key does not open capture db-2"; a short wrong one was
    // called too weak, as if it were to make a slot).
    e.ok(&["keys", "forget", "--name", "db-2"]);
    let delta = e.run(&[
        "capture",
        "--source",
        "disk.raw",
        "--medium",
        "dir:mnt",
        "--name",
        "db-2",
        "--delta",
        "--passphrase-file",
        "badpw",
    ]);
    assert_eq!(delta.status.code(), Some(2), "{}", stderr(&delta));
    assert!(
        stderr(&delta).contains("the passphrase in badpw does not open capture db-2")
            && stderr(&delta).contains("--passphrase-file with the file given at capture"),
        "{}",
        stderr(&delta)
    );
    // Capture takes no --identity: the advice does not name it (it did).
    assert!(!stderr(&delta).contains("--identity"), "{}", stderr(&delta));
    // The refused run left nothing in the key cache (a `.signer` note stayed, which `keys
    // forget` could not remove: no key matched).
    let left: Vec<_> = fs::read_dir(e.p("state/mgear/keys"))
        .map(|d| d.flatten().map(|f| f.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn cli_wrong_identity_exits_2() {
    let e = Env::new();
    e.keygen();
    e.ok(&["keygen", "--out", "other.key"]);
    make_disk(&e.p("disk.raw"), 2, 4);
    fs::create_dir(e.p("mnt")).unwrap();
    e.capture("dir:mnt", "web01").source("disk.raw").ok();
    for args in [
        vec![
            "verify",
            "--allow-untrusted",
            "--medium",
            "dir:mnt",
            "--identity",
            "other.key",
        ],
        vec![
            "ingest",
            "--allow-untrusted",
            "--medium",
            "dir:mnt",
            "--name",
            "web01",
            "--identity",
            "other.key",
            "--target",
            "file:v.raw",
            INGEST_UNSEALED,
        ],
    ] {
        let out = e.run(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains("other.key does not open capture web01"),
            "{err}"
        );
        // Which slots the capture has, and the key that would open it.
        assert!(
            err.contains("only a recipient slot (for 1 public key), no passphrase slot"),
            "{err}"
        );
        assert!(
            err.contains("whose .pub was given as --recipient at capture"),
            "{err}"
        );
    }
    // The ingest report of that stop, and serve, say as much (the report held the bare
    // "this key does not open capture web01", serve printed only that).
    let out = e.run(&[
        "ingest",
        "--allow-untrusted",
        "--medium",
        "dir:mnt",
        "--name",
        "web01",
        "--identity",
        "other.key",
        "--target",
        "file:v.raw",
        INGEST_UNSEALED,
        "--report",
        "r.json",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let r: serde_json::Value = serde_json::from_slice(&fs::read(e.p("r.json")).unwrap()).unwrap();
    assert!(
        r["result"]["error"]
            .to_string()
            .contains("only a recipient slot (for 1 public key)"),
        "{r}"
    );
    e.ingest("dir:mnt", "web01")
        .untrusted()
        .target("file:vol.raw")
        .unsealed()
        .ok();
    let out = e.run(&[
        "serve",
        "--medium",
        "dir:mnt",
        "--name",
        "web01",
        "--identity",
        "other.key",
        "--target",
        "file:vol.raw",
        "--allow-untrusted",
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("whose .pub was given as --recipient at capture"),
        "{}",
        stderr(&out)
    );
    // Not a medium of ours / not a FAT image: a clear error, not a panic.
    fs::write(e.p("junk.img"), vec![0u8; 1 << 20]).unwrap();
    let out = e.run(&["inspect", "--medium", "fat:junk.img"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("FAT"), "{}", stderr(&out));
    let out = e.run(&["inspect", "--medium", "junk.img"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn cli_corrupted_record_is_named() {
    let e = Env::new();
    e.keygen();
    random_disk(&e.p("disk.raw"), 3 << 20, 5);
    fs::create_dir(e.p("mnt")).unwrap();
    e.capture("dir:mnt", "web01").source("disk.raw").ok();
    let seg = e.p("mnt/MGEAR/web01/G0001/SEG-00000");
    let mut bytes = fs::read(&seg).unwrap();
    // Somewhere inside the second record's payload (records are ~1 MiB).
    let at = (1 << 20) + 4096 + 500;
    bytes[at] ^= 0x40;
    fs::write(&seg, bytes).unwrap();
    let out = e.run(&["verify", "--medium", "dir:mnt"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let text = stdout(&out);
    assert!(
        text.contains("capture web01")
            && text.contains("generation 1")
            && text.contains("segment 0")
            && text.contains("record 1"),
        "verify must name capture, generation, segment and record:\n{text}"
    );
    let v = e.run(&["verify", "--medium", "dir:mnt", "--json"]);
    assert_eq!(v.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&v.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["problems"][0]["record"], 1, "{v}");
    // Ingest refuses the damaged chunk (exit 1) and leaves no complete-looking target.
    let out = e
        .ingest("dir:mnt", "web01")
        .untrusted()
        .target("file:v.raw")
        .unsealed()
        .run();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(!e.p("v.raw").exists());
}

#[test]
fn cli_delta_stores_less_and_ingests_the_changed_disk() {
    let e = Env::new();
    e.keygen();
    make_disk(&e.p("disk.raw"), 8, 6);
    let m = e.fat("medium.img", "64MiB");
    let full = e.capture(&m, "web01").source("disk.raw").json();
    // Change two chunks.
    let mut disk = fs::read(e.p("disk.raw")).unwrap();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(66);
    for b in &mut disk[(2 << 20)..(2 << 20) + 4096] {
        *b = rng.gen();
    }
    disk[(5 << 20) + 7] ^= 1;
    fs::write(e.p("disk.raw"), &disk).unwrap();
    let delta = e
        .capture(&m, "web01")
        .source("disk.raw")
        .arg("--delta")
        .json();
    assert_eq!(delta["generation"], 2);
    assert_eq!(delta["parent"], 1);
    assert_eq!(delta["stored_chunks"], 2, "{delta}");
    assert!(
        delta["stored_bytes"].as_u64().unwrap() * 2 < full["stored_bytes"].as_u64().unwrap(),
        "delta {delta} vs full {full}"
    );
    e.ingest(&m, "web01")
        .untrusted()
        .target("file:v2.raw")
        .unsealed()
        .ok();
    same_file(&e.p("disk.raw"), &e.p("v2.raw"));
    e.ingest(&m, "web01")
        .untrusted()
        .target("file:v1.raw")
        .args(&["--generation", "1"])
        .unsealed()
        .ok();
    let v1 = fs::read(e.p("v1.raw")).unwrap();
    assert_ne!(v1, disk);
    assert_eq!(v1[(5 << 20) + 7], disk[(5 << 20) + 7] ^ 1);
    // The delta onto the volume of its parent: refused saying what --force does and what
    // keeps a volume up to date in place (it said only "exists: pass --force").
    let onto = e
        .ingest(&m, "web01")
        .untrusted()
        .target("file:v1.raw")
        .unsealed();
    let o = onto.clone().run();
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(
        output_text(&o).contains(
            "v1.raw exists and holds another finished ingest (web01 generation 1, ingested on \
             this host)"
        ) && output_text(&o).contains("write web01 generation 2 over it (the whole disk")
            && output_text(&o).contains("`mgear serve`"),
        "{}",
        output_text(&o)
    );
    assert_eq!(fs::read(e.p("v1.raw")).unwrap(), v1, "nothing was written");
    // A volume others could read is replaced by a file only its owner reads (decrypted data):
    // said before the write (the mode changed without a word).
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(e.p("v1.raw"), fs::Permissions::from_mode(0o644)).unwrap();
    let o = onto.args(&["--force", "--json"]).ok();
    assert!(
        output_text(&o).contains("--force replaces")
            && output_text(&o).contains("(mode 0644) with a new file, mode 0600"),
        "{}",
        output_text(&o)
    );
    // ... and in the report a script reads (it was on stderr only), after the trust gate's
    // override.
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let warned = v["warnings"].as_array().expect("warnings");
    assert!(
        warned.len() == 2
            && warned[0].as_str().unwrap().contains("--allow-untrusted")
            && warned[1]
                .as_str()
                .unwrap()
                .contains("(mode 0644) with a new file"),
        "{v}"
    );
    let mode = fs::metadata(e.p("v1.raw")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    same_file(&e.p("disk.raw"), &e.p("v1.raw"));
    // Made readable again as that note says: the finished ingest re-run says the volume
    // changed since (it said only "exists: pass --force", as of somebody's file).
    fs::set_permissions(e.p("v1.raw"), fs::Permissions::from_mode(0o644)).unwrap();
    let o = e
        .ingest(&m, "web01")
        .untrusted()
        .target("file:v1.raw")
        .unsealed()
        .run();
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("v1.raw holds web01 generation 2, ingested and verified on this host, but it changed since"),
        "{}",
        output_text(&o)
    );
    fsck_clean(&e.p("medium.img"));
    // The disk grown since: serve and sync cannot follow a size, so the refusal says --force
    // is the way (it pointed at serve, and serve's sync had pointed here).
    let grown = [disk.clone(), vec![3u8; 1 << 20]].concat();
    fs::write(e.p("grown.raw"), &grown).unwrap();
    e.capture(&m, "web01")
        .source("grown.raw")
        .args(&["--delta", "--same-source"])
        .ok();
    let o = e
        .ingest(&m, "web01")
        .untrusted()
        .target("file:v2.raw")
        .unsealed()
        .run();
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("the disk changed size since")
            && !output_text(&o).contains("`mgear serve`"),
        "{}",
        output_text(&o)
    );
    // A raw volume given as qcow2: refused, naming the kind (it was "kept ... verified",
    // exit 0, and then failed to boot).
    let before = fs::read(e.p("v2.raw")).unwrap();
    let o = e
        .ingest(&m, "web01")
        .untrusted()
        .target("qcow2:v2.raw")
        .args(&["--generation", "2"])
        .unsealed()
        .run();
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("holds a raw disk, not a qcow2 image: give it as file:"),
        "{}",
        output_text(&o)
    );
    assert_eq!(
        fs::read(e.p("v2.raw")).unwrap(),
        before,
        "nothing was written"
    );
}

/// Start `args`, wait until `ready` is true (or the process ends), SIGKILL it.
fn kill_when(line: &Line, ready: impl Fn() -> bool) {
    let mut child = start_when(line, ready);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

#[test]
fn cli_capture_resumes_after_sigkill() {
    let e = Env::new();
    e.keygen();
    random_disk(&e.p("disk.raw"), 12 << 20, 7);
    fs::create_dir(e.p("mnt")).unwrap();
    let capture = e.capture("dir:mnt", "web01").source("disk.raw");
    let slow = capture
        .clone()
        .args(&["--rate-limit", "3MiB/s", "--checkpoint-bytes", "1MiB"]);
    // Kill once a few chunks are durable (the journal is written at each checkpoint).
    let seg = e.p("mnt/MGEAR/web01/G0001/SEG-00000");
    kill_when(&slow, || {
        fs::metadata(&seg)
            .map(|m| m.len() > 4 << 20)
            .unwrap_or(false)
    });
    let i = e.json(&["inspect", "--medium", "dir:mnt"]);
    let g = &i["captures"][0]["generations"][0];
    assert_eq!(g["state"], "unfinished", "{i}");
    let r = capture.json(); // same command, no rate limit: finish quickly
    assert!(r["resumed_from_chunk"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["generation"], 1);
    // Random data stores at about its size: the ratio is over the whole disk, not over what
    // this run read.
    let ratio = r["ratio"].as_f64().unwrap();
    assert!((0.99..1.01).contains(&ratio), "{r}");
    e.ok(&[
        "verify",
        "--allow-untrusted",
        "--medium",
        "dir:mnt",
        "--identity",
        "target.key",
    ]);
    e.ingest("dir:mnt", "web01")
        .untrusted()
        .target("file:v.raw")
        .unsealed()
        .ok();
    same_file(&e.p("disk.raw"), &e.p("v.raw"));
}

/// A delta killed part-way and re-run with the same command was refused as "medium full": the
/// resume was checked for the space of a whole disk, where the same delta started afresh was
/// checked (as a delta is) for its index.
#[test]
fn a_killed_delta_resumes_on_a_medium_too_small_for_a_second_full_copy() {
    let e = Env::new();
    e.keygen();
    random_disk(&e.p("disk.raw"), 40 << 20, 31);
    e.fat("medium.img", "64MiB");
    let capture = e.capture("fat:medium.img", "web01").source("disk.raw");
    capture.clone().ok();
    let mut disk = fs::read(e.p("disk.raw")).unwrap();
    for b in &mut disk[(8 << 20)..(12 << 20)] {
        *b ^= 0x5a;
    }
    fs::write(e.p("disk.raw"), &disk).unwrap();
    let delta = capture.clone().args(&["--delta"]);
    // Killed past its changed chunks (8-11, read by about 4 s at 3 MiB/s) and well before its
    // end (40 MiB: 13 s); the medium is locked while it runs, so the clock says when.
    let slow = delta
        .clone()
        .args(&["--rate-limit", "3MiB/s", "--checkpoint-bytes", "1MiB"]);
    let started = std::time::Instant::now();
    kill_when(&slow, || {
        started.elapsed() > std::time::Duration::from_secs(7)
    });
    let i = e.json(&["inspect", "--medium", "fat:medium.img"]);
    assert_eq!(
        i["captures"][0]["generations"][1]["state"], "unfinished",
        "{i}"
    );
    let plan = delta.clone().args(&["--dry-run"]).json();
    assert_eq!(plan["kind"], "resume", "{plan}");
    assert_eq!(plan["fits"], true, "{plan}");
    let r = delta.json();
    assert!(r["resumed_from_chunk"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["generation"], 2, "{r}");
    #[rustfmt::skip]
    e.ingest("fat:medium.img", "web01").untrusted().target("file:v.raw").unsealed().ok();
    same_file(&e.p("disk.raw"), &e.p("v.raw"));
}

#[test]
fn cli_ingest_resumes_after_sigkill() {
    let e = Env::new();
    e.keygen();
    random_disk(&e.p("disk.raw"), 12 << 20, 8);
    fs::create_dir(e.p("mnt")).unwrap();
    e.capture("dir:mnt", "web01").source("disk.raw").ok();
    let ingest = e
        .ingest("dir:mnt", "web01")
        .untrusted()
        .target("file:v.raw")
        .unsealed();
    let slow = ingest
        .clone()
        .args(&["--rate-limit", "3MiB/s", "--checkpoint-bytes", "1MiB"]);
    let state = e.p("state/mgear/ingest");
    let progressed = || recorded_chunks(&state) >= 4;
    kill_when(&slow, progressed);
    assert!(
        !e.p("v.raw").exists(),
        "an interrupted ingest must not leave a complete-looking target"
    );
    assert!(e.p("v.raw.partial").exists());
    let r = ingest.json();
    assert!(r["resumed_chunks"].as_u64().unwrap() >= 4, "{r}");
    same_file(&e.p("disk.raw"), &e.p("v.raw"));
}

/// The most chunks an ingest state file in `dir` records as durable.
fn recorded_chunks(dir: &Path) -> usize {
    let Ok(d) = fs::read_dir(dir) else { return 0 };
    d.flatten()
        .map(|f| f.path())
        .filter(|p| p.extension().is_some_and(|x| x == "ingest"))
        .map(|p| mgear_tests::recorded_chunks(&p))
        .max()
        .unwrap_or(0)
}

/// A medium that fills up right after a signed capture's MANIFEST (its last journal entry
/// or COMMIT did not fit): the generation is complete (inspect, keyless verify), so the old
/// advice, to abort it or continue on one more medium, led nowhere (abort refused a finished
/// generation; the join failed on the full medium and left both media unclean). Said as it
/// is, with the step that works: free a little room and run the same command, which adds
/// the signature without capturing again.
#[test]
fn a_medium_that_fills_after_the_manifest_is_told_as_a_complete_generation() {
    let e = Env::new();
    e.keygen();
    e.ok(&["keygen", "--signing", "--out", "site.key"]);
    random_disk(&e.p("disk.raw"), 4 << 20, 3);
    let m = e.fat("medium.img", "64MiB");
    let mdir = Command::new("mdir")
        .args(["-i", &e.s("medium.img"), "::"])
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .expect("mdir (Debian: mtools)");
    let listing = String::from_utf8_lossy(&mdir.stdout).into_owned();
    let free: usize = listing
        .lines()
        .find(|l| l.contains("bytes free"))
        .map(|l| l.chars().filter(char::is_ascii_digit).collect::<String>())
        .and_then(|d| d.parse().ok())
        .unwrap_or_else(|| panic!("{listing}"));
    // Room for the data and the index, not for the last few files.
    random_disk(&e.p("filler"), free - (4 << 20) - 4096, 4);
    let st = Command::new("mcopy")
        .args(["-i", &e.s("medium.img"), &e.s("filler"), "::FILLER"])
        .env("MTOOLS_SKIP_CHECK", "1")
        .status()
        .expect("mcopy (Debian: mtools)");
    assert!(st.success());
    let capture = e.capture(&m, "web01").source("disk.raw").args(&[
        "--sign",
        "site.key",
        "--skip-space-check",
    ]);
    let out = capture.run();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("web01 generation 1 is captured and complete")
            && err.contains("run the same command again: it adds the signature")
            && !err.contains("--abort"),
        "{err}"
    );
    fsck_clean(&e.p("medium.img"));
    let v = e.run(&["verify", "--medium", &m, "--trust", "site.pub"]);
    assert_eq!(v.status.code(), Some(1), "not signed yet: {}", stderr(&v));
    // One more medium cannot join a medium with no room for the span's map: refused, and
    // both file systems are left clean (the failed join left the dirty flag on both).
    let m2 = e.fat("medium2.img", "64MiB");
    let out = e
        .capture(&m, "web01")
        .medium(&m2)
        .source("disk.raw")
        .args(&["--sign", "site.key", "--skip-space-check"])
        .run();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("has no room left for the span's map")
            && stderr(&out).contains("free a few MiB on the full medium"),
        "{}",
        stderr(&out)
    );
    fsck_clean(&e.p("medium.img"));
    fsck_clean(&e.p("medium2.img"));
    let st = Command::new("mdel")
        .args(["-i", &e.s("medium.img"), "::FILLER"])
        .env("MTOOLS_SKIP_CHECK", "1")
        .status()
        .unwrap();
    assert!(st.success());
    let r = capture.json();
    assert_eq!(r["generation"], 1, "{r}");
    e.ok(&["verify", "--medium", &m, "--trust", "site.pub"]);
    fsck_clean(&e.p("medium.img"));
}

#[test]
fn cli_medium_full_then_resume_after_freeing() {
    let e = Env::new();
    e.keygen();
    random_disk(&e.p("disk.raw"), 16 << 20, 9);
    let m = e.fat("medium.img", "40MiB");
    // Fill most of the medium with a file we can delete later (mtools).
    random_disk(&e.p("filler"), 30 << 20, 10);
    let st = Command::new("mcopy")
        .args(["-i", &e.s("medium.img"), &e.s("filler"), "::FILLER"])
        .status()
        .expect("mcopy (Debian: mtools)");
    assert!(st.success());
    let capture = e.capture(&m, "web01").source("disk.raw");
    // Capture refuses before writing when its estimate does not fit...
    let out = capture.run();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("nothing was written"),
        "{}",
        stderr(&out)
    );
    // ...and when the medium fills anyway (an estimate overruled), it stops
    // cleanly and resumes once space is freed.
    let capture = capture.arg("--skip-space-check");
    let out = capture.run();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("medium full") && err.contains("re-run the same command"),
        "{err}"
    );
    fsck_clean(&e.p("medium.img"));
    let st = Command::new("mdel")
        .args(["-i", &e.s("medium.img"), "::FILLER"])
        .status()
        .unwrap();
    assert!(st.success());
    let r = capture.json();
    assert_eq!(r["generation"], 1);
    e.ingest(&m, "web01")
        .untrusted()
        .target("file:v.raw")
        .unsealed()
        .ok();
    same_file(&e.p("disk.raw"), &e.p("v.raw"));
    fsck_clean(&e.p("medium.img"));
}

#[test]
fn cli_qcow2_target_round_trip() {
    let e = Env::new();
    e.keygen();
    make_disk(&e.p("disk.raw"), 6, 11);
    fs::create_dir(e.p("mnt")).unwrap();
    e.capture("dir:mnt", "web01").source("disk.raw").ok();
    // Relative names qemu's tools would read as a protocol (`file:`) or an option (`-o`):
    // `qcow2:file:v.qcow2` left an empty `file:v.qcow2`, "verified", and the data in a stray
    // `v.qcow2.partial.new`.
    for name in ["v.qcow2", "file:v.qcow2", "-o.qcow2"] {
        // A relative state dir: qemu-nbd takes only an absolute socket path.
        e.ingest("dir:mnt", "web01")
            .untrusted()
            .target(&format!("qcow2:{name}"))
            .args(&["--state-dir", "st"])
            .unsealed()
            .ok();
        let info = Command::new("qemu-img")
            .args(["info", &e.s(name)])
            .output()
            .unwrap();
        assert!(
            stdout(&info).contains("file format: qcow2"),
            "{name}: {}",
            stdout(&info)
        );
        let st = Command::new("qemu-img")
            .args([
                "convert",
                "-f",
                "qcow2",
                "-O",
                "raw",
                &e.s(name),
                &e.s("back.raw"),
            ])
            .status()
            .expect("qemu-img (Debian: qemu-utils)");
        assert!(st.success());
        same_file(&e.p("disk.raw"), &e.p("back.raw"));
        fs::remove_file(e.p("back.raw")).unwrap();
    }
    let left: Vec<_> = fs::read_dir(e.dir.path())
        .unwrap()
        .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("partial"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn cli_help_documents_exit_codes_and_usage_errors_exit_2() {
    let e = Env::new();
    let out = e.ok(&["--help"]);
    let help = stdout(&out);
    for needle in [
        "Exit codes",
        "0  success",
        "1  a failure was found",
        "2  usage",
        "3  I/O",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
    }
    // `help` with a help flag is that help (clap refused it: "unrecognized subcommand").
    assert_eq!(stdout(&e.ok(&["help", "--help"])), help);
    let v: serde_json::Value =
        serde_json::from_str(&stdout(&e.ok(&["help", "help", "--json"]))).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(
        stdout(&e.ok(&["help", "keys", "list", "-h"])),
        stdout(&e.ok(&["keys", "list", "-h"]))
    );
    let out = e.run(&["capture", "--source", "nope.raw"]);
    assert_eq!(out.status.code(), Some(2));
    let out = e.run(&[
        "capture",
        "--source",
        "nope.raw",
        "--medium",
        "dir:.",
        "--name",
        "x",
        "--rate-limit",
        "fast",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn cli_nbd_source_skips_holes() {
    let e = Env::new();
    e.keygen();
    // 16 MiB, of which only the first 2 MiB hold data: a thin qcow2.
    let mut disk = vec![0u8; 16 << 20];
    rand::rngs::SmallRng::seed_from_u64(12).fill_bytes(&mut disk[..2 << 20]);
    fs::write(e.p("disk.raw"), &disk).unwrap();
    let st = Command::new("qemu-img")
        .args([
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            &e.s("disk.raw"),
            &e.s("disk.qcow2"),
        ])
        .status()
        .expect("qemu-img (Debian: qemu-utils)");
    assert!(st.success());
    let sock = e.p("nbd.sock");
    let _server = qemu_nbd(&["-r", "-t", "-f", "qcow2"], &sock, &e.p("disk.qcow2"));
    fs::create_dir(e.p("mnt")).unwrap();
    let url = format!("nbd+unix:///?socket={}", sock.display());
    let c = e.capture("dir:mnt", "thin").source(&url).json();
    assert_eq!(c["disk_size"], 16 << 20);
    assert!(c["holes_skipped"].as_u64().unwrap() >= 12 << 20, "{c}");
    e.ingest("dir:mnt", "thin")
        .untrusted()
        .target("file:v.raw")
        .unsealed()
        .ok();
    same_file(&e.p("disk.raw"), &e.p("v.raw"));
    // An ingest's --rate-limit paces what it reads and writes: the 2 MiB of data, not the 14
    // MiB of zero chunks (16 MiB at 1 MiB/s took 16 s). Bounds far apart: a slow machine
    // stays well inside them.
    let r = e
        .ingest("dir:mnt", "thin")
        .untrusted()
        .target("file:v2.raw")
        .unsealed()
        .args(&["--rate-limit", "1MiB/s"])
        .json();
    let secs = r["seconds"].as_f64().unwrap();
    assert!(
        (1.5..10.0).contains(&secs),
        "2 MiB of data at 1 MiB/s took {secs:.2} s"
    );
    same_file(&e.p("disk.raw"), &e.p("v2.raw"));
}

#[test]
fn cli_dev_target_writes_chunk_zero_last_and_clears_marker() {
    let e = Env::new();
    e.keygen();
    make_disk(&e.p("disk.raw"), 5, 13);
    fs::create_dir(e.p("mnt")).unwrap();
    e.capture("dir:mnt", "web01").source("disk.raw").ok();
    // A used "cloud volume", one MiB larger than the disk, full of old data.
    let mut old = vec![0u8; 6 << 20];
    rand::rngs::SmallRng::seed_from_u64(14).fill_bytes(&mut old);
    fs::write(e.p("volume.img"), &old).unwrap();
    let dev = Loop::attach(&e.p("volume.img"));
    let state = e.p("ingest-state");
    let name = Path::new(&dev.0)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let marker = state.join(format!("{name}.mgear-incomplete"));
    let target = format!("dev:{}", dev.0);
    let state_arg = state.display().to_string();
    let ingest = e
        .ingest("dir:mnt", "web01")
        .untrusted()
        .target(&target)
        .args(&["--state-dir", &state_arg])
        .unsealed();
    let slow = ingest
        .clone()
        .args(&["--rate-limit", "2MiB/s", "--checkpoint-bytes", "1MiB"]);
    // Interrupted half-way: the marker says so and the first chunk (the
    // partition table) is not there yet, so the volume does not look bootable.
    let progressed = || recorded_chunks(&state) >= 2;
    kill_when(&slow, progressed);
    assert!(
        marker.exists(),
        "an interrupted device ingest must keep its marker"
    );
    let mut first = vec![0u8; 1 << 20];
    {
        use std::os::unix::fs::FileExt;
        fs::File::open(&dev.0)
            .unwrap()
            .read_exact_at(&mut first, 0)
            .unwrap();
    }
    assert!(
        first.iter().all(|&b| b == 0),
        "chunk 0 must be written last"
    );
    let r = ingest.json();
    assert_eq!(r["verified"], true);
    assert!(r["resumed_chunks"].as_u64().unwrap() >= 1, "{r}");
    assert!(!marker.exists(), "marker must be gone after success");
    drop(dev);
    let vol = fs::read(e.p("volume.img")).unwrap();
    let disk = fs::read(e.p("disk.raw")).unwrap();
    // Old data in zero chunks was overwritten: the volume starts with exactly the disk.
    assert!(
        vol[..disk.len()] == disk[..],
        "device content differs from the disk"
    );
    assert_eq!(
        &vol[disk.len()..],
        &old[disk.len()..],
        "bytes past the disk must be left alone"
    );
}

#[test]
fn cli_rate_limit_holds_the_average_and_empty_media_are_reported() {
    let e = Env::new();
    e.keygen();
    random_disk(&e.p("disk.raw"), 3 << 20, 15);
    let m = e.fat("medium.img", "40MiB");
    // An empty medium is not silently "OK".
    let out = e.run(&["verify", "--medium", &m]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no MotionGear capture"),
        "{}",
        stderr(&out)
    );
    // 3 MiB at 1 MiB/s cannot take less than about 3 s (the bucket starts
    // empty). Only this lower bound is asserted: a loaded machine may be slower.
    #[rustfmt::skip]
    let c = e.capture(&m, "slow").source("disk.raw").args(&["--rate-limit", "1MiB/s"]).json();
    let secs = c["seconds"].as_f64().unwrap();
    assert!(secs >= 2.7, "3 MiB at 1 MiB/s took only {secs:.2} s");
}

#[test]
fn cli_fat_medium_over_nbd() {
    let e = Env::new();
    e.keygen();
    make_disk(&e.p("disk.raw"), 4, 16);
    e.fat("medium.img", "40MiB");
    let sock = e.p("medium.sock");
    let server = qemu_nbd(&["-t", "-f", "raw"], &sock, &e.p("medium.img"));
    let url = format!("nbd+unix:///?socket={}", sock.display());
    #[rustfmt::skip]
    e.capture(&url, "web01").source("disk.raw").ok();
    drop(server);
    fsck_clean(&e.p("medium.img"));
    #[rustfmt::skip]
    e.ingest("fat:medium.img", "web01").untrusted().target("file:v.raw").unsealed().ok();
    same_file(&e.p("disk.raw"), &e.p("v.raw"));
}

#[test]
fn cli_nbd_target_round_trip() {
    // Ingest onto an NBD export (qemu-nbd serving a thin qcow2, as a stand-in
    // for rbd or a cloud volume) and check the image holds exactly the disk.
    let e = Env::new();
    e.keygen();
    make_disk(&e.p("disk.raw"), 6, 21);
    fs::create_dir(e.p("mnt")).unwrap();
    e.capture("dir:mnt", "nbdvol").source("disk.raw").ok();
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", &e.s("vol.qcow2"), "8M"])
        .status()
        .expect("qemu-img (Debian: qemu-utils)");
    assert!(st.success());
    let sock = e.p("target.sock");
    let server = qemu_nbd(&["-t", "-f", "qcow2"], &sock, &e.p("vol.qcow2"));
    let url = format!("nbd+unix:///?socket={}", sock.display());
    let r = e
        .ingest("dir:mnt", "nbdvol")
        .untrusted()
        .target(&url)
        .args(&["--state-dir", "state"])
        .json();
    assert_eq!(r["verified"], true, "{r}");
    drop(server);
    let st = Command::new("qemu-img")
        .args([
            "convert",
            "-f",
            "qcow2",
            "-O",
            "raw",
            &e.s("vol.qcow2"),
            &e.s("back.raw"),
        ])
        .status()
        .unwrap();
    assert!(st.success());
    let back = fs::read(e.p("back.raw")).unwrap();
    let disk = fs::read(e.p("disk.raw")).unwrap();
    assert_eq!(back.len(), 8 << 20);
    assert!(
        back[..disk.len()] == disk[..],
        "the export differs from the disk"
    );
    assert!(back[disk.len()..].iter().all(|b| *b == 0));
    // The temporary staging copy is gone.
    let left: Vec<_> = fs::read_dir(e.p("state"))
        .unwrap()
        .filter_map(|d| d.ok())
        .filter(|d| d.file_name().to_string_lossy().ends_with(".raw"))
        .collect();
    assert!(left.is_empty(), "staging file left behind");

    // A read-only export is refused with an I/O error, not a panic.
    let _ro = qemu_nbd(
        &["-r", "-t", "-f", "qcow2"],
        &e.p("ro.sock"),
        &e.p("vol.qcow2"),
    );
    let out = e
        .ingest("dir:mnt", "nbdvol")
        .untrusted()
        .target(&format!("nbd+unix:///?socket={}", e.p("ro.sock").display()))
        .args(&["--state-dir", "state"])
        .run();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("read-only"), "{}", stderr(&out));
}

/// `mgear bench` on a tiny source: every pattern, every step, ratios that
/// are the step's throughput over its dd baseline, and the targets listed.
#[test]
fn cli_bench_reports_ratios_against_dd_and_targets() {
    let e = Env::new();
    let r = e.json(&[
        "bench",
        "--size",
        "4MiB",
        "--pattern",
        "all",
        "--scale",
        "8MiB,16MiB",
        "--workdir",
        "work",
    ]);
    let patterns = r["patterns"].as_array().unwrap();
    let names: Vec<&str> = patterns
        .iter()
        .map(|p| p["pattern"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["random", "mix", "zeros", "sparse"], "{r}");
    let step = |p: &serde_json::Value, what: &str| -> serde_json::Value {
        p["timings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["what"].as_str().unwrap().starts_with(what))
            .unwrap_or_else(|| panic!("no {what} step in {p}"))
            .clone()
    };
    for p in patterns {
        let dd = step(p, "dd source");
        let cap = step(p, "mgear capture");
        let rate = |t: &serde_json::Value| t["mb_per_s"].as_f64().unwrap();
        assert!(rate(&dd) > 0.0 && rate(&cap) > 0.0, "{p}");
        let want = rate(&cap) / rate(&dd);
        let got = cap["vs_dd"].as_f64().unwrap();
        assert!(
            (got - want).abs() < 1e-9 * want.max(1.0),
            "{got} vs {want}: {p}"
        );
        assert!(cap["cpu_seconds"].as_f64().unwrap() >= 0.0, "{p}");
        step(p, "mgear ingest");
        step(p, "qemu-img convert");
    }
    // Random data: ingest is compared with dd copying the medium's files, and with that dd
    // followed by a direct read of its copy (ingest's three passes on one disk).
    let random = &patterns[0];
    let ing = step(random, "mgear ingest (");
    let ddm = step(random, "dd medium files -> target (fsync)");
    let rate = |t: &serde_json::Value| t["mb_per_s"].as_f64().unwrap();
    let want = rate(&ing) / rate(&ddm);
    assert!(
        (ing["vs_dd"].as_f64().unwrap() - want).abs() < 1e-9 * want.max(1.0),
        "{ing} {ddm}"
    );
    let three = step(
        random,
        "dd medium files -> target, then a direct read of the copy",
    );
    assert!(
        three["seconds"].as_f64().unwrap() > ddm["seconds"].as_f64().unwrap(),
        "{three}"
    );
    let line = r["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["what"] == "ingest of random data vs dd + a read of its copy, one disk")
        .unwrap_or_else(|| panic!("no three-pass target in {r}"))
        .clone();
    let measured = format!("x{:.2}", rate(&ing) / rate(&three));
    assert_eq!(line["measured"], measured.as_str(), "{line}");
    let targets: Vec<&str> = r["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["what"].as_str().unwrap())
        .collect();
    for t in [
        "capture of random data vs dd",
        "ingest of mix data vs dd",
        "capture of zeros (zero regions)",
        "CPU per byte, large capture over small",
        "peak RSS",
    ] {
        assert!(targets.contains(&t), "{t} missing from {targets:?}");
    }
    assert!(r["peak_rss_bytes"].as_u64().unwrap() > 0);
    // The work directory is cleaned up but for the key.
    assert!(!e.p("work/medium").exists());
}

/// A source that shrinks while it is captured stops the capture with a
/// clear error (exit 3, "shrank"), keeps what was committed, and the same
/// command resumes and finishes once the source is whole again.
#[test]
fn cli_source_that_shrinks_mid_capture_is_a_clear_error_and_resumable() {
    let e = Env::new();
    e.keygen();
    random_disk(&e.p("disk.raw"), 8 << 20, 21);
    let original = fs::read(e.p("disk.raw")).unwrap();
    fs::create_dir(e.p("mnt")).unwrap();
    let capture = e.capture("dir:mnt", "web01").source("disk.raw");
    let child = capture
        .clone()
        .args(&["--rate-limit", "2MiB/s", "--checkpoint-bytes", "1MiB"])
        .command()
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let seg = e.p("mnt/MGEAR/web01/G0001/SEG-00000");
    let start = Instant::now();
    while fs::metadata(&seg)
        .map(|m| m.len() < 2 << 20)
        .unwrap_or(true)
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "capture made no progress"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The disk loses its second half while the capture reads it.
    fs::OpenOptions::new()
        .write(true)
        .open(e.p("disk.raw"))
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("shrank") && err.contains("disk.raw"), "{err}");
    // Whole again: the same command resumes and the result is the disk.
    fs::write(e.p("disk.raw"), &original).unwrap();
    let c = capture.json();
    assert!(c["resumed_from_chunk"].as_u64().unwrap() >= 1, "{c}");
    e.ingest("dir:mnt", "web01")
        .untrusted()
        .target("file:vol.raw")
        .unsealed()
        .ok();
    same_file(&e.p("disk.raw"), &e.p("vol.raw"));
}

/// Start `line` and wait until `ready()`; the child is still running.
fn start_when(line: &Line, ready: impl Fn() -> bool) -> std::process::Child {
    let args = line.argv();
    let mut child = line
        .command()
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !ready() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "mgear {args:?} finished too early"
        );
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "mgear {args:?} made no progress"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

#[test]
fn cli_second_writer_on_a_medium_is_refused_before_writing() {
    let e = Env::new();
    e.keygen();
    random_disk(&e.p("a.raw"), 12 << 20, 31);
    random_disk(&e.p("b.raw"), 4 << 20, 32);
    let medium = e.fat("m.img", "64MiB");
    let first = e
        .capture(&medium, "disk0")
        .source("a.raw")
        .args(&["--rate-limit", "3MiB/s"]);
    let seg = e.p("m.img");
    let before = fs::read(&seg).unwrap();
    let child = start_when(&first, || {
        fs::read(&seg).map(|now| now != before).unwrap_or(false)
    });
    // A second capture (another disk of the machine) and a reader are refused
    // at once, naming the holder, and exit 3 without touching the medium.
    let second = e.capture(&medium, "disk1").source("b.raw").run();
    assert_eq!(second.status.code(), Some(3), "{}", stderr(&second));
    let msg = stderr(&second);
    assert!(msg.contains("is in use by pid"), "{msg}");
    assert!(
        msg.contains("--name disk0"),
        "the holder's command line is named: {msg}"
    );
    let reader = e.run(&["inspect", "--medium", &medium]);
    assert_eq!(reader.status.code(), Some(3), "{}", stderr(&reader));
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    // Serialised, both captures succeed and the medium is clean.
    e.capture(&medium, "disk1").source("b.raw").ok();
    e.ok(&["verify", "--medium", &medium]);
    fsck_clean(&e.p("m.img"));
}

#[test]
fn cli_sigterm_stops_capture_and_ingest_at_a_checkpoint_and_they_resume() {
    let e = Env::new();
    e.keygen();
    random_disk(&e.p("disk.raw"), 12 << 20, 33);
    fs::create_dir(e.p("mnt")).unwrap();
    let capture = e.capture("dir:mnt", "web01").source("disk.raw");
    let seg = e.p("mnt/MGEAR/web01/G0001/SEG-00000");
    let child = start_when(&capture.clone().args(&["--rate-limit", "3MiB/s"]), || {
        fs::metadata(&seg)
            .map(|m| m.len() > 2 << 20)
            .unwrap_or(false)
    });
    nix_kill(child.id(), "TERM");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let msg = stderr(&out);
    assert!(
        msg.contains("stopped; run the same command to resume ("),
        "{msg}"
    );
    assert!(msg.contains("of 12.00 MiB done)"), "{msg}");
    let again = capture.json();
    assert!(again["resumed_from_chunk"].as_u64().unwrap() > 0, "{again}");

    let ingest = e
        .ingest("dir:mnt", "web01")
        .untrusted()
        .target("file:v.raw");
    let slow = ingest.clone().args(&[
        "--rate-limit",
        "3MiB/s",
        "--checkpoint-bytes",
        "1MiB",
        "--report",
        "stopped.json",
    ]);
    let partial = e.p("v.raw.partial");
    // Stop a second and a half after the volume appears: mid-way at 3 MiB/s.
    let child = start_when(&slow, || fs::metadata(&partial).is_ok());
    std::thread::sleep(Duration::from_millis(1500));
    nix_kill(child.id(), "INT");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("stopped; run the same command to resume ("),
        "{}",
        stderr(&out)
    );
    assert!(
        !e.p("v.raw").exists(),
        "a stopped ingest never looks finished"
    );
    // Its ticket report names the generation it was writing beside the manifest root.
    let r: serde_json::Value =
        serde_json::from_slice(&fs::read(e.p("stopped.json")).unwrap()).unwrap();
    assert_eq!(r["result"]["generation"], 1, "{r}");
    assert!(r["digests"]["manifest_root"].is_string(), "{r}");
    // With every key a finished run's report has (volume_sha256 was missing).
    assert!(
        r["digests"]
            .as_object()
            .is_some_and(|d| d.contains_key("volume_sha256")),
        "{r}"
    );
    ingest.ok();
    same_file(&e.p("disk.raw"), &e.p("v.raw"));
}

/// Ctrl-C under a very low `--rate-limit` stops within moments, not after the minutes one
/// chunk's wait takes at that rate (1 MiB at 2 KiB/s: 512 s).
#[test]
fn cli_ctrl_c_stops_a_slow_capture_at_once() {
    let e = Env::new();
    e.keygen();
    random_disk(&e.p("disk.raw"), 4 << 20, 35);
    fs::create_dir(e.p("mnt")).unwrap();
    let child = e
        .capture("dir:mnt", "web01")
        .source("disk.raw")
        .args(&["--rate-limit", "2KiB/s"])
        .spawn();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    nix_kill(child.id(), "INT");
    let asked = std::time::Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(
        asked.elapsed() < std::time::Duration::from_secs(20),
        "stopped after {:?}",
        asked.elapsed()
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("run the same command to resume"),
        "{}",
        stderr(&out)
    );
}

/// Send SIGTERM/SIGINT to `pid` with kill(1), as an operator would.
fn nix_kill(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn cli_rate_without_a_unit_is_refused() {
    let e = Env::new();
    e.keygen();
    random_disk(&e.p("disk.raw"), 1 << 20, 34);
    fs::create_dir(e.p("mnt")).unwrap();
    let out = e
        .capture("dir:mnt", "web01")
        .source("disk.raw")
        .args(&["--rate-limit", "50"])
        .run();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("has no unit: write e.g. 50MiB/s"),
        "{}",
        stderr(&out)
    );
    assert!(
        !e.p("mnt/MGEAR").exists(),
        "nothing written before the refusal"
    );
}

#[test]
fn cli_closed_stdout_ends_quietly_not_with_a_panic() {
    // `mgear appliance log | head`: the reader goes away before mgear prints.
    let e = Env::new();
    let mut child = e
        .cmd(&["keygen", "--signing", "--out", "site.key"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader is gone
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(!err.contains("panicked"), "{err}");
    assert_ne!(out.status.code(), Some(101), "{err}");
    assert!(matches!(out.status.code(), Some(0) | Some(3)), "{err}");
}

/// A medium carrying another target's capture too: a keyed verify of the whole medium checks
/// what its key opens, names the capture it does not (exit 2: no finding, no pass either);
/// with `--name` the one capture verifies.
#[test]
fn cli_keyed_verify_checks_what_its_key_opens_and_names_the_rest() {
    let e = Env::new();
    e.keygen();
    e.ok(&["keygen", "--out", "other.key"]);
    random_disk(&e.p("disk.raw"), 2 << 20, 36);
    fs::create_dir(e.p("m")).unwrap();
    e.capture("dir:m", "ours").source("disk.raw").ok();
    e.ok(&[
        "capture",
        "--medium",
        "dir:m",
        "--name",
        "theirs",
        "--source",
        "disk.raw",
        "--recipient",
        "other.pub",
    ]);
    // A capture with only a passphrase slot: not this identity's either.
    fs::write(e.p("pass.txt"), "orbit-walnut-cascade-7741-lantern\n").unwrap();
    e.ok(&[
        "capture",
        "--medium",
        "dir:m",
        "--name",
        "locked",
        "--source",
        "disk.raw",
        "--passphrase-file",
        "pass.txt",
    ]);
    let all = [
        "verify",
        "--medium",
        "dir:m",
        "--identity",
        "target.key",
        "--allow-untrusted",
    ];
    let o = e.run(&all);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let said = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        said.contains("NOT OPENED by this key: locked, theirs"),
        "{said}"
    );
    assert!(!said.contains("OK: no problems found"), "{said}");
    let o = e.run(&[&all[..], &["--json"]].concat());
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v["not_opened"],
        serde_json::json!(["locked", "theirs"]),
        "{v}"
    );
    assert_eq!(
        (v["captures"].clone(), v["ok"].clone()),
        (1.into(), false.into()),
        "{v}"
    );
    e.ok(&[&all[..], &["--name", "ours"]].concat());
    // The passphrase verifies its capture and names the two with recipient slots only.
    let o = e.run(&[
        "verify",
        "--medium",
        "dir:m",
        "--passphrase-file",
        "pass.txt",
        "--allow-untrusted",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v["not_opened"],
        serde_json::json!(["ours", "theirs"]),
        "{v}"
    );
    assert_eq!(v["captures"], 1, "{v}");
}

/// `verify` (which only reads) stopped by SIGTERM or Ctrl-C ends at once, exit 3, with the one
/// JSON object `--json` promises: the signal's default killed it (exit 143, nothing printed).
#[test]
fn cli_a_stopped_verify_exits_3_with_one_json_object() {
    let e = Env::new();
    // A medium whose open blocks (an NBD peer that takes the connection and never answers):
    // verify waits there. (A FIFO is refused by name now, before anything opens it.)
    let peer = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("nbd://{}/m", peer.local_addr().unwrap());
    let _held = std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in peer.incoming().flatten() {
            held.push(c);
        }
    });
    for signal in ["-TERM", "-INT"] {
        let child = e
            .cmd(&["--json", "verify", "--medium", &url])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1500));
        let st = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        let o = child.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(3), "{signal}: {}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|err| panic!("{signal}: not one JSON object ({err})"));
        assert_eq!(v["ok"], false, "{v}");
        assert_eq!(v["command"], "verify", "{v}");
        assert_eq!(v["error"]["kind"], "io", "{v}");
    }
}

/// `capture --dry-run` writes nothing: stopped by SIGTERM it ends at once, exit 3, as verify
/// does. One on a huge NBD export ran on for minutes after SIGTERM ("stopping after the work
/// at hand"); here the source is an NBD peer that takes the connection and never answers.
#[test]
fn cli_a_stopped_dry_run_exits_at_once() {
    let e = Env::new();
    e.keygen();
    fs::create_dir(e.p("m")).unwrap();
    let peer = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("nbd://{}/disk", peer.local_addr().unwrap());
    let _held = std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in peer.incoming().flatten() {
            held.push(c);
        }
    });
    let child = e
        .capture("dir:m", "web01")
        .source(&url)
        .args(&["--dry-run", "--json"])
        .command()
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let started = std::time::Instant::now();
    nix_kill(child.id(), "TERM");
    let o = child.wait_with_output().unwrap();
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|err| panic!("not one JSON object ({err}): {}", stdout(&o)));
    assert_eq!(v["ok"], false, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("nothing was changed"),
        "{v}"
    );
}

/// `--passphrase-generate` writes its file once per run: every disk of a set shares it, a run
/// stopped after its capture began keeps it and the same command resumes with it, and a run
/// refused before its capture existed removes it again.
#[test]
fn cli_a_generated_passphrase_serves_a_set_and_the_resume_of_a_stopped_run() {
    let e = Env::new();
    e.keygen();
    random_disk(&e.p("a.raw"), 3 << 20, 71);
    random_disk(&e.p("b.raw"), 2 << 20, 72);
    fs::create_dir(e.p("m")).unwrap();
    let gen = ["--passphrase-file", "gen.pw", "--passphrase-generate"];
    // A set: both disks under the one new passphrase, which then opens it.
    e.capture("dir:m", "mach")
        .sources(&["a.raw", "b.raw"])
        .args(&gen)
        .ok();
    let all = ["--medium", "dir:m", "--allow-untrusted"];
    e.ok(&[&["verify", "--passphrase-file", "gen.pw"], &all[..]].concat());

    // A set stopped on its first disk keeps the file, and the same command finishes the set
    // under it: both disks open with it. Another passphrase for its resume is refused.
    random_disk(&e.p("c.raw"), 24 << 20, 74);
    random_disk(&e.p("d.raw"), 2 << 20, 75);
    let set = e
        .capture("dir:m", "mach2")
        .sources(&["c.raw", "d.raw"])
        .args(&["--passphrase-file", "set.pw", "--passphrase-generate"]);
    set.stopped_after("4MiB/s", 2000);
    assert!(
        e.p("set.pw").exists(),
        "the stopped set's passphrase file was removed"
    );
    fs::write(e.p("other.pw"), "orbit-walnut-cascade-7741-lantern\n").unwrap();
    let o = e
        .capture("dir:m", "mach2")
        .sources(&["c.raw", "d.raw"])
        .args(&["--passphrase-file", "other.pw"])
        .run();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("does not open capture mach2's passphrase slot"),
        "{}",
        stderr(&o)
    );
    // Without the --recipient disk 0 was made with, the disks still to capture would open
    // with the passphrase only: refused before anything is written.
    let o = e.run(&[
        "capture",
        "--medium",
        "dir:m",
        "--name",
        "mach2",
        "--source",
        "c.raw",
        "--source",
        "d.raw",
        "--passphrase-file",
        "set.pw",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("give --recipient"), "{}", stderr(&o));
    // Resumed on another host (a key cache not made yet), by its passphrase and recipient.
    e.ok(&[
        "capture",
        "--medium",
        "dir:m",
        "--name",
        "mach2",
        "--source",
        "c.raw",
        "--source",
        "d.raw",
        "--recipient",
        "target.pub",
        "--passphrase-file",
        "set.pw",
        "--key-cache",
        "other-host-keys",
    ]);
    // Every disk opens with the passphrase and with the target key.
    e.ok(&[
        &["verify", "--name", "mach2", "--passphrase-file", "set.pw"],
        &all[..],
    ]
    .concat());
    e.ok(&[
        &["verify", "--name", "mach2", "--identity", "target.key"],
        &all[..],
    ]
    .concat());

    // A run refused after the file was written (an empty source) leaves no file behind.
    fs::write(e.p("empty.raw"), b"").unwrap();
    let o = e
        .capture("dir:m", "nothing")
        .source("empty.raw")
        .args(&["--passphrase-file", "none.pw", "--passphrase-generate"])
        .run();
    assert_ne!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!e.p("none.pw").exists(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("removed none.pw again"),
        "{}",
        stderr(&o)
    );

    // Stopped after its capture began: the same command resumes with the file it wrote.
    random_disk(&e.p("big.raw"), 24 << 20, 73);
    let line = e.capture("dir:m", "big").source("big.raw").args(&[
        "--passphrase-file",
        "big.pw",
        "--passphrase-generate",
    ]);
    line.stopped_after("4MiB/s", 2000);
    let written = fs::read_to_string(e.p("big.pw")).unwrap();
    line.ok();
    assert_eq!(fs::read_to_string(e.p("big.pw")).unwrap(), written);
    e.ok(&[
        &["verify", "--name", "big", "--passphrase-file", "big.pw"],
        &all[..],
    ]
    .concat());

    // A capture already on the medium never gets a new passphrase; a new one never takes a
    // file that is there.
    let o = e
        .capture("dir:m", "big")
        .source("big.raw")
        .args(&[
            "--delta",
            "--passphrase-file",
            "new.pw",
            "--passphrase-generate",
        ])
        .run();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("already exists: --passphrase-generate"),
        "{}",
        stderr(&o)
    );
    assert!(!e.p("new.pw").exists());
    let o = e
        .capture("dir:m", "fresh")
        .source("a.raw")
        .args(&["--passphrase-file", "big.pw", "--passphrase-generate"])
        .run();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("it already exists"), "{}", stderr(&o));
    // `--dry-run` refuses both as the capture does (it said "fits", exit 0), of one disk and
    // of a set, and writes no file.
    for (sources, made) in [(&["a.raw"][..], "big"), (&["a.raw", "b.raw"][..], "mach")] {
        let o = e
            .capture("dir:m", "fresh")
            .sources(sources)
            .args(&[
                "--passphrase-file",
                "big.pw",
                "--passphrase-generate",
                "--dry-run",
            ])
            .run();
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains("it already exists"), "{}", stderr(&o));
        let o = e
            .capture("dir:m", made)
            .sources(sources)
            .args(&[
                "--delta",
                "--passphrase-file",
                "new.pw",
                "--passphrase-generate",
                "--dry-run",
            ])
            .run();
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(
            stderr(&o).contains("already exists: --passphrase-generate"),
            "{}",
            stderr(&o)
        );
        assert!(!e.p("new.pw").exists());
    }
    // A file in a directory that does not exist: the capture refuses it, and so its dry run.
    let o = e
        .capture("dir:m", "fresh")
        .source("a.raw")
        .args(&[
            "--passphrase-file",
            "nodir/f.pw",
            "--passphrase-generate",
            "--dry-run",
        ])
        .run();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("directory nodir does not exist"),
        "{}",
        stderr(&o)
    );
    // A new capture's dry run with a file not there yet plans and writes nothing.
    e.capture("dir:m", "fresh")
        .source("a.raw")
        .args(&[
            "--passphrase-file",
            "fresh.pw",
            "--passphrase-generate",
            "--dry-run",
        ])
        .ok();
    assert!(!e.p("fresh.pw").exists());
}

/// `medium format plain.img` was told to say "--medium" (a flag it has not) and offered
/// dir: and NBD media, which format refuses: it is told the fat: spelling of that path.
#[test]
fn cli_format_of_a_bare_path_names_the_fat_spelling() {
    let e = Env::new();
    let o = e.run(&["medium", "format", "plain.img", "--size", "40MiB"]);
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    let said = stderr(&o);
    assert!(said.contains("mgear medium format fat:plain.img"), "{said}");
    assert!(
        !said.contains("--medium") && !said.contains("dir:"),
        "{said}"
    );
    assert!(!e.p("plain.img").exists());
}

/// A finished ingest run again with another `--state-dir` was told only "exists: pass
/// --force": the state that keeps it is named, and nothing is written.
#[test]
fn a_finished_volume_run_again_with_another_state_dir_names_the_state_that_keeps_it() {
    let e = Env::new();
    e.keygen();
    make_disk(&e.p("disk.raw"), 3, 12);
    fs::create_dir(e.p("mnt")).unwrap();
    e.capture("dir:mnt", "web01").source("disk.raw").ok();
    let ingest = || {
        e.ingest("dir:mnt", "web01")
            .untrusted()
            .target("file:v.raw")
            .unsealed()
    };
    ingest().ok();
    let before = fs::metadata(e.p("v.raw")).unwrap().modified().unwrap();
    let o = ingest().args(&["--state-dir", "other"]).run();
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("finished by an ingest whose state is in")
            && output_text(&o).contains("without --state-dir to keep it"),
        "{}",
        output_text(&o)
    );
    assert_eq!(
        fs::metadata(e.p("v.raw")).unwrap().modified().unwrap(),
        before
    );
    // As told: kept.
    let o = ingest().run();
    assert!(output_text(&o).contains("kept"), "{}", output_text(&o));
}
