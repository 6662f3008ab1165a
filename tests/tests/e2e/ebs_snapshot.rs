//! `mgear ingest --target ebs-snapshot:NAME` into the strict offline EBS double
//! (`mgear_cloud::ebs::double`): every request mgear sends must pass the checker (SigV4, block
//! size, checksums, counts), the snapshot must hold exactly the disk's non-zero 512 KiB blocks,
//! equal to the source, and a killed ingest must resume into the same snapshot.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use mgear_cloud::ebs::double::{Double, DoubleConfig};
use mgear_tests::{output_text, Env, Line};

const BLOCK: usize = 512 * 1024;
const GIB: u64 = 1 << 30;

/// A 1 GiB sparse disk: a boot region, scattered data runs (some not block-aligned, one a
/// single byte in an otherwise empty block), the last bytes of the disk, holes everywhere else.
fn disk_with_holes(path: &Path) {
    let mut f = fs::File::create(path).unwrap();
    f.set_len(GIB).unwrap();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut noise = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8 | 1
            })
            .collect()
    };
    let runs: [(u64, usize); 7] = [
        (0, 1 << 20),
        (3 << 20, 2 << 20),
        ((100 << 20) + 4096, 700 << 10),
        (333 << 20, 1),
        ((512 << 20) - 100, 200),
        (900 << 20, 3 << 20),
        (GIB - 8192, 8192),
    ];
    for (off, len) in runs {
        f.seek(SeekFrom::Start(off)).unwrap();
        f.write_all(&noise(len)).unwrap();
    }
    // Boot code and no partitions: a disk BIOS boots (an image is registered from it).
    f.seek(SeekFrom::Start(446)).unwrap();
    f.write_all(&[0; 64]).unwrap();
    f.write_all(&[0x55, 0xAA]).unwrap();
    f.sync_all().unwrap();
}

/// The disk's non-zero blocks, as EBS must hold them.
fn nonzero_blocks(path: &Path) -> BTreeMap<u64, Vec<u8>> {
    use std::io::Read;
    let mut f = fs::File::open(path).unwrap();
    let mut out = BTreeMap::new();
    let mut buf = vec![0u8; BLOCK];
    let mut i = 0u64;
    loop {
        buf.fill(0);
        let mut n = 0;
        while n < BLOCK {
            match f.read(&mut buf[n..]).unwrap() {
                0 => break,
                k => n += k,
            }
        }
        if n == 0 {
            return out;
        }
        if buf.iter().any(|&b| b != 0) {
            out.insert(i, buf.clone());
        }
        i += 1;
    }
}

fn captured(e: &Env) {
    e.keygen();
    e.ok(&["keygen", "--signing", "--out", "site.key"]);
    disk_with_holes(&e.p("disk.raw"));
    fs::create_dir(e.p("mnt")).unwrap();
    e.capture("dir:mnt", "web01")
        .source("disk.raw")
        .sign("site.key")
        .ok();
}

fn ingest<'e>(e: &'e Env, extra: &[&str]) -> Line<'e> {
    e.ingest("dir:mnt", "web01")
        .trust("site.pub")
        .unsealed()
        .target("ebs-snapshot:web01")
        .args(extra)
}

fn with_double(e: &Env, d: &Double, line: &Line) -> std::process::Command {
    let mut c = line.command();
    for (k, v) in d.env() {
        c.env(k, v);
    }
    c.env_remove("AWS_PROFILE")
        .env("HOME", e.p("home"))
        .env_remove("AWS_SESSION_TOKEN");
    c
}

/// `line` slowed into `d`, killed once some blocks are in (and a checkpoint or two recorded).
fn killed_after_some_blocks(e: &Env, d: &Double, line: &Line) {
    let slow = line
        .clone()
        .args(&["--rate-limit", "4MiB/s", "--checkpoint-bytes", "1MiB"]);
    let mut child = with_double(e, d, &slow)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    loop {
        let puts = d.accepted().get("PutSnapshotBlock").copied().unwrap_or(0);
        if puts >= 6 {
            break;
        }
        if let Some(st) = child.try_wait().unwrap() {
            panic!("ingest ended before it could be killed: {st}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

fn check_snapshot(e: &Env, d: &Double, id: &str) {
    check_snapshot_after(e, d, id, None);
}

/// [`check_snapshot`] where the checker refused one thing: mgear asking after the snapshot
/// `gone`, deleted by the test (the answer that tells it so).
fn check_snapshot_after(e: &Env, d: &Double, id: &str, gone: Option<&str>) {
    check_snapshot_of(e, d, id, "disk.raw", gone);
}

/// [`check_snapshot_after`] of a snapshot of the disk `src`.
fn check_snapshot_of(e: &Env, d: &Double, id: &str, src: &str, gone: Option<&str>) {
    let rejected: Vec<_> = d
        .rejections()
        .into_iter()
        .filter(|r| {
            gone.is_none_or(|g| {
                !(r.op == "EC2"
                    && r.message
                        .contains(&format!("InvalidSnapshot.NotFound: The snapshot '{g}'")))
            })
        })
        .collect();
    assert!(rejected.is_empty(), "the checker refused: {rejected:#?}");
    let snap = d.snapshot(id).expect("the snapshot mgear reported exists");
    assert_eq!(snap.status, "completed");
    assert_eq!(snap.volume_gib, 1);
    let want = nonzero_blocks(&e.p(src));
    assert_eq!(
        snap.blocks.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "the snapshot must hold exactly the non-zero blocks"
    );
    for (i, b) in &want {
        assert!(&snap.blocks[i] == b, "block {i} differs from the source");
    }
}

#[test]
fn ebs_snapshot_holds_exactly_the_nonzero_blocks() {
    let e = Env::new();
    captured(&e);
    let d = Double::start(DoubleConfig {
        // Throttle some puts: mgear must retry them, as AWS asks.
        throttle_every: 7,
        ..DoubleConfig::default()
    });
    let out = with_double(
        &e,
        &d,
        &ingest(&e, &["--register-image", "--json", "--volume-sha256"]),
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // A snapshot is not read back: no digest, and said so (only the JSON's null said it).
    assert_eq!(r["volume_sha256"], serde_json::Value::Null, "{r}");
    assert!(
        output_text(&out).contains("--volume-sha256: no digest of"),
        "{}",
        output_text(&out)
    );
    // "snap-... ami-...": the snapshot, then the image registered from it.
    let vol = r["volume"].as_str().expect("snapshot id in the report");
    let id = vol.split_whitespace().next().unwrap().to_string();
    assert!(id.starts_with("snap-"), "{r}");
    assert_eq!(d.snapshot_ids(), std::slice::from_ref(&id));
    check_snapshot(&e, &d, &id);
    assert!(d.throttled() > 0);
    // The AMI points at the snapshot.
    let images = d.images();
    assert_eq!(images.len(), 1, "{images:?}");
    let (ami, (_, snap)) = images.iter().next().unwrap();
    assert_eq!(snap, &id);
    assert!(vol.ends_with(ami.as_str()), "{r}");
    // ... also apart, for scripts.
    assert_eq!(r["snapshot_id"].as_str(), Some(id.as_str()), "{r}");
    assert_eq!(r["image_id"].as_str(), Some(ami.as_str()), "{r}");
    // The same command again makes no second snapshot (each costs): the first is kept, exit 0
    // as for a finished file (it was exit 2, which a script re-running an interrupted ingest
    // took for a failure), and reported with its image.
    let again = with_double(&e, &d, &ingest(&e, &["--json"]))
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(0), "{}", output_text(&again));
    let said = output_text(&again);
    assert!(
        said.contains("kept, not made again") && said.contains(&id),
        "{said}"
    );
    let kept: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(kept["volume"].as_str(), Some(vol), "{kept}");
    assert_eq!(kept["snapshot_id"].as_str(), Some(id.as_str()), "{kept}");
    assert_eq!(kept["image_id"].as_str(), Some(ami.as_str()), "{kept}");
    // Image options given on a kept run are not applied to the image kept: said (they were
    // silently ignored). (arch=arm64 is refused for this disk, which boots BIOS only.)
    let arm = e
        .ingest("dir:mnt", "web01")
        .trust("site.pub")
        .unsealed()
        .target("ebs-snapshot:web01?register-image=1&root-device=/dev/sda1");
    let o = with_double(&e, &d, &arm).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("are not applied to it") && output_text(&o).contains("--force"),
        "{}",
        output_text(&o)
    );
    assert_eq!(d.images().len(), 1);
    assert_eq!(kept["verified"], true, "{kept}");
    assert_eq!(d.snapshot_ids(), std::slice::from_ref(&id));
    let forced = with_double(&e, &d, &ingest(&e, &["--force"]))
        .output()
        .unwrap();
    assert!(forced.status.success(), "{}", output_text(&forced));
    assert!(
        String::from_utf8_lossy(&forced.stdout)
            .contains("as EBS computed it on receipt, matches what was authenticated"),
        "{}",
        output_text(&forced)
    );
    // A second snapshot under one name is said, naming the first (it went unsaid).
    assert!(
        output_text(&forced).contains("already names") && output_text(&forced).contains(&id),
        "{}",
        output_text(&forced)
    );
    assert_eq!(d.snapshot_ids().len(), 2);
    // Nothing of the disk stays in the state dir.
    let left: Vec<_> = walk(&e.p("state"));
    assert!(
        left.iter().all(|(_, len)| *len < 4 << 20),
        "state dir holds large files: {left:?}"
    );
}

#[test]
fn ebs_snapshot_killed_ingest_resumes_into_the_same_snapshot() {
    let e = Env::new();
    captured(&e);
    let d = Double::start(DoubleConfig::default());
    killed_after_some_blocks(&e, &d, &ingest(&e, &[]));
    let ids = d.snapshot_ids();
    assert_eq!(ids.len(), 1);
    assert_eq!(d.snapshot(&ids[0]).unwrap().status, "pending");

    let out = with_double(&e, &d, &ingest(&e, &["--json"]))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(r["resumed_chunks"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["volume"].as_str(), Some(ids[0].as_str()), "{r}");
    assert_eq!(d.snapshot_ids(), ids, "no second snapshot");
    check_snapshot(&e, &d, &ids[0]);
}

#[test]
fn ebs_snapshot_bad_credentials_are_a_clear_error() {
    let e = Env::new();
    captured(&e);
    let d = Double::start(DoubleConfig::default());
    let out = with_double(&e, &d, &ingest(&e, &[]))
        .env("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        .output()
        .unwrap();
    // The operator's to fix (exit 2, what to check), not an I/O failure to retry (exit 3,
    // "reconnect it").
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("StartSnapshot")
            && err.contains("InvalidSignatureException")
            && err.contains("AWS_SECRET_ACCESS_KEY"),
        "{}",
        output_text(&out)
    );
    // What to do is about the AWS settings, not `mgear ingest --help`.
    assert!(
        err.contains("what to do: set what the message names in the environment")
            && !err.contains("--help"),
        "{}",
        output_text(&out)
    );
    assert!(d.snapshot_ids().is_empty());
}

/// An endpoint that takes the connection and never answers: the first SIGTERM ends the ingest
/// once nothing moved for the grace time (exit 3, "the same command resumes"). It waited on
/// the request's retries, minutes each, until a second signal (exit 130, no result).
#[test]
fn a_silent_endpoint_is_left_at_the_first_sigterm() {
    let e = Env::new();
    captured(&e);
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = std::thread::spawn(move || {
        let mut open = Vec::new();
        for c in silent.incoming().take(4) {
            open.push(c);
        }
        std::thread::sleep(std::time::Duration::from_secs(60));
    });
    let started = std::time::Instant::now();
    let child = ingest(&e, &["--json"])
        .command()
        .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}"))
        .env("AWS_REGION", "eu-west-1")
        .env("AWS_ACCESS_KEY_ID", "A")
        .env("AWS_SECRET_ACCESS_KEY", "B")
        .env("HOME", e.p("home"))
        .env("MGEAR_STOP_GRACE", "2")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(2));
    let st = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", output_text(&out));
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("made no progress for 2 s after the stop request"),
        "{v}"
    );
    drop(held);
}

fn walk(dir: &Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir(dir) {
        for f in rd.flatten() {
            let p = f.path();
            match f.metadata() {
                Ok(m) if m.is_dir() => out.extend(walk(&p)),
                Ok(m) => {
                    use std::os::unix::fs::MetadataExt;
                    out.push((p.display().to_string(), m.blocks() * 512));
                }
                Err(_) => {}
            }
        }
    }
    out
}

/// The double as a user starts it (`mgear-ebs-double`): its export lines reach it, an ingest
/// through them completes a snapshot, and Enter lists it with nothing refused.
#[test]
fn the_ebs_double_program_takes_an_ingest_a_user_points_at_it() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let e = Env::new();
    captured(&e);
    // --help says how to use it and ends (it started a server that waited for Enter).
    let help = std::process::Command::new(mgear_tests::bin("mgear-ebs-double"))
        .arg("--help")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(help.status.success(), "{}", output_text(&help));
    assert!(String::from_utf8_lossy(&help.stdout).starts_with("usage: mgear-ebs-double"));
    let bad = std::process::Command::new(mgear_tests::bin("mgear-ebs-double"))
        .args(["--port", "http"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2), "{}", output_text(&bad));
    assert!(output_text(&bad).contains("--port takes a port number"));
    // On the port asked for (a user may only have some ports open to them).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut double = std::process::Command::new(mgear_tests::bin("mgear-ebs-double"))
        .args(["--port", &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("mgear-ebs-double (built with mgear-cloud's test-double feature)");
    let mut out = BufReader::new(double.stdout.take().unwrap());
    let mut env = Vec::new();
    while env.len() < 4 {
        let mut l = String::new();
        assert!(
            out.read_line(&mut l).unwrap() > 0,
            "the double printed {env:?}"
        );
        let (k, v) = l
            .trim()
            .strip_prefix("export ")
            .and_then(|kv| kv.split_once('='))
            .unwrap_or_else(|| panic!("not an export line: {l}"));
        env.push((k.to_string(), v.trim_matches('\'').to_string()));
    }
    assert!(
        env.iter()
            .any(|(_, v)| v == &format!("http://127.0.0.1:{port}")),
        "{env:?}"
    );
    let mut c = ingest(&e, &[]).command();
    c.envs(env)
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN")
        .env("HOME", e.p("home"));
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", output_text(&o));
    drop(double.stdin.take());
    let mut listed = String::new();
    std::io::Read::read_to_string(&mut out, &mut listed).unwrap();
    double.wait().unwrap();
    assert!(listed.contains("1 snapshot(s)"), "{listed}");
    assert!(listed.contains(" completed "), "{listed}");
    assert!(listed.contains("0 request(s) refused"), "{listed}");
}

/// A finished ingest re-run with `--register-image` registers the image from the snapshot it
/// completed (the only way was `--force`: a whole new snapshot); a completed snapshot deleted
/// since is made again.
#[test]
fn ebs_snapshot_kept_gets_its_image_and_a_deleted_one_is_made_again() {
    let e = Env::new();
    captured(&e);
    let d = Double::start(DoubleConfig::default());
    let first = with_double(&e, &d, &ingest(&e, &["--json"]))
        .output()
        .unwrap();
    assert!(first.status.success(), "{}", output_text(&first));
    let ids = d.snapshot_ids();
    assert_eq!(ids.len(), 1);
    assert!(d.images().is_empty());
    let imaged = with_double(&e, &d, &ingest(&e, &["--register-image", "--json"]))
        .output()
        .unwrap();
    assert!(imaged.status.success(), "{}", output_text(&imaged));
    assert_eq!(d.snapshot_ids(), ids, "no second snapshot");
    let images = d.images();
    assert_eq!(images.len(), 1, "{images:?}");
    let (ami, (_, snap)) = images.iter().next().unwrap();
    assert_eq!(snap, &ids[0]);
    let r: serde_json::Value = serde_json::from_slice(&imaged.stdout).unwrap();
    assert_eq!(
        r["volume"].as_str(),
        Some(format!("{} {ami}", ids[0]).as_str()),
        "{r}"
    );
    assert!(d.delete_snapshot(&ids[0]));
    let again = with_double(&e, &d, &ingest(&e, &["--json"]))
        .output()
        .unwrap();
    assert!(again.status.success(), "{}", output_text(&again));
    assert!(
        output_text(&again).contains("is gone (deleted since): making a new one"),
        "{}",
        output_text(&again)
    );
    let now = d.snapshot_ids();
    assert_eq!(now.len(), 1);
    assert_ne!(now, ids);
    check_snapshot_after(&e, &d, &now[0], Some(&ids[0]));
}

/// A finished ingest re-run against another service (the double started again, so another
/// disk's snapshot now has the recorded id): the snapshot's description is not this ingest's,
/// and it is refused, not "kept" (exit 0 with another disk in it); `--force` makes a new one.
#[test]
fn a_recorded_snapshot_id_that_holds_another_ingest_is_not_kept() {
    let e = Env::new();
    captured(&e);
    let d = Double::start(DoubleConfig::default());
    let first = with_double(&e, &d, &ingest(&e, &[])).output().unwrap();
    assert!(first.status.success(), "{}", output_text(&first));
    let id = d.snapshot_ids()[0].clone();
    drop(d);
    let d = Double::start(DoubleConfig::default());
    fs::write(e.p("other.raw"), image_format::bench::noise(1 << 20, 9)).unwrap();
    e.capture("dir:mnt", "other")
        .source("other.raw")
        .sign("site.key")
        .ok();
    let other = e
        .ingest("dir:mnt", "other")
        .trust("site.pub")
        .unsealed()
        .target("ebs-snapshot:other");
    let o = with_double(&e, &d, &other).output().unwrap();
    assert!(o.status.success(), "{}", output_text(&o));
    assert_eq!(
        d.snapshot_ids(),
        std::slice::from_ref(&id),
        "the same id, another disk"
    );
    let o = with_double(&e, &d, &ingest(&e, &[])).output().unwrap();
    // A refusal (exit 2), as a target holding another disk is: it was exit 3, "reconnect it".
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(
        output_text(&o).contains(&format!("snapshot {id}, completed by an earlier run"))
            && output_text(&o).contains("not as this ingest's snapshot"),
        "{}",
        output_text(&o)
    );
    let o = with_double(&e, &d, &ingest(&e, &["--force", "--json"]))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", output_text(&o));
    let now = d.snapshot_ids();
    assert_eq!(now.len(), 2);
    check_snapshot_of(&e, &d, &now[1], "disk.raw", None);
}

/// A killed ingest whose pending snapshot is gone when it is re-run (deleted, or cancelled by
/// AWS after its timeout): every re-run failed each put with 404, `--force` too, until the
/// state files were found and removed by hand. It starts a new snapshot and writes all of it.
#[test]
fn ebs_snapshot_gone_while_pending_is_started_again() {
    let e = Env::new();
    captured(&e);
    let d = Double::start(DoubleConfig::default());
    killed_after_some_blocks(&e, &d, &ingest(&e, &[]));
    let ids = d.snapshot_ids();
    assert_eq!(ids.len(), 1);
    assert!(d.delete_snapshot(&ids[0]));
    let out = with_double(&e, &d, &ingest(&e, &["--json"]))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        output_text(&out).contains(&format!(
            "the pending snapshot {} an earlier run of this ingest wrote is gone",
            ids[0]
        )),
        "{}",
        output_text(&out)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["resumed_chunks"].as_u64(), Some(0), "{r}");
    let now = d.snapshot_ids();
    assert_eq!(now.len(), 1);
    assert_ne!(now, ids);
    assert_eq!(r["volume"].as_str(), Some(now[0].as_str()), "{r}");
    check_snapshot_after(&e, &d, &now[0], Some(&ids[0]));
}

/// A machine set ingested with `--register-image`: the image is registered from the disk the
/// machine boots from only (every data disk's snapshot became an AMI of its own).
#[test]
fn a_sets_image_is_registered_from_its_boot_disk_only() {
    let e = Env::new();
    e.keygen();
    let mut boot = image_format::bench::noise(2 << 20, 61);
    // An MBR with boot code and no partitions: the disk the machine boots from.
    boot[446..510].fill(0);
    boot[510] = 0x55;
    boot[511] = 0xAA;
    fs::write(e.p("d0.raw"), &boot).unwrap();
    fs::write(e.p("d1.raw"), image_format::bench::noise(1 << 20, 62)).unwrap();
    fs::create_dir(e.p("mnt")).unwrap();
    e.capture("dir:mnt", "m1")
        .sources(&["d0.raw", "d1.raw"])
        .ok();
    let d = Double::start(DoubleConfig::default());
    let line = e
        .ingest("dir:mnt", "m1")
        .untrusted()
        .target("ebs-snapshot:m1-boot")
        .target("ebs-snapshot:m1-data")
        .args(&["--register-image", "--json"]);
    let out = with_double(&e, &d, &line).output().unwrap();
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    // Each disk is completed after every disk was written: its blocks were put before.
    assert!(
        !text.contains("(0 put by this run") && text.contains("put before it was completed"),
        "{text}"
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let snap = |k: usize| {
        r["disks"][k]["snapshot_id"]
            .as_str()
            .unwrap_or_else(|| panic!("disk {k}'s snapshot: {r}"))
            .to_string()
    };
    let images = d.images();
    assert_eq!(images.len(), 1, "{images:?}");
    let (_, (_, from)) = images.iter().next().unwrap();
    assert_eq!(*from, snap(0), "{r}");
    assert!(r["disks"][1]["image_id"].is_null(), "{r}");
    assert_ne!(snap(1), snap(0));
    // The data disk alone with --register-image registered nothing and said nothing:
    // refused before anything is written.
    let line = e
        .ingest("dir:mnt", "m1")
        .untrusted()
        .target("ebs-snapshot:m1-data-again")
        .args(&["--disk", "1", "--register-image"]);
    let out = with_double(&e, &d, &line).output().unwrap();
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("--disk 1 is a data disk of set m1")
            && text.contains("registers the machine's image from its boot disk, disk 0")
            && text.contains("nothing was written"),
        "{text}"
    );
    assert_eq!(d.images().len(), 1);
    assert_eq!(d.snapshot_ids().len(), 2, "a snapshot was started");
    // One disk of its own that boots neither BIOS nor UEFI: its image is refused as a set's
    // data disk's is (it registered one), before a snapshot is started.
    e.capture("dir:mnt", "data1").source("d1.raw").ok();
    let line = e
        .ingest("dir:mnt", "data1")
        .untrusted()
        .target("ebs-snapshot:data1")
        .arg("--register-image");
    let out = with_double(&e, &d, &line).output().unwrap();
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("--register-image: data1 generation 1 boots neither BIOS nor UEFI")
            && text.contains("nothing was written"),
        "{text}"
    );
    assert_eq!(d.snapshot_ids().len(), 2, "a snapshot was started");
    assert_eq!(d.images().len(), 1);
    // The boot disk boots with BIOS only: an image registered to start it with UEFI (or as
    // arm64, UEFI alone) never starts either, and went through without a word.
    e.capture("dir:mnt", "boot1").source("d0.raw").ok();
    for (opts, says) in [
        (
            "boot-mode=uefi",
            "boot-mode=uefi: boot1 generation 1 boots with BIOS only",
        ),
        (
            "arch=arm64",
            "arch=arm64: boot1 generation 1 boots with BIOS only",
        ),
    ] {
        let line = e
            .ingest("dir:mnt", "boot1")
            .untrusted()
            .target(&format!("ebs-snapshot:boot1?register-image=1&{opts}"));
        let out = with_double(&e, &d, &line).output().unwrap();
        let text = output_text(&out);
        assert_eq!(out.status.code(), Some(2), "{text}");
        assert!(
            text.contains(says) && text.contains("would never start; nothing was written"),
            "{text}"
        );
    }
    assert_eq!(d.snapshot_ids().len(), 2, "a snapshot was started");
    assert_eq!(d.images().len(), 1);
}

/// A set ingest into snapshots, killed and re-run with its targets in another order: refused
/// before anything is sent, as for files (it started a new snapshot for each disk and left
/// the killed run's pending, for AWS to time out a day later), and the right order goes on
/// in the killed run's snapshot; once finished, swapped targets are refused too (each disk
/// made a new snapshot under the other's name).
#[test]
fn a_set_ingest_into_snapshots_re_run_in_another_order_starts_nothing() {
    let e = Env::new();
    e.keygen();
    fs::write(e.p("d0.raw"), image_format::bench::noise(24 << 20, 71)).unwrap();
    fs::write(e.p("d1.raw"), image_format::bench::noise(1 << 20, 72)).unwrap();
    fs::create_dir(e.p("mnt")).unwrap();
    e.capture("dir:mnt", "m2")
        .sources(&["d0.raw", "d1.raw"])
        .ok();
    let d = Double::start(DoubleConfig::default());
    let line = |a: &str, b: &str| {
        e.ingest("dir:mnt", "m2")
            .untrusted()
            .target(&format!("ebs-snapshot:{a}"))
            .target(&format!("ebs-snapshot:{b}"))
    };
    killed_after_some_blocks(&e, &d, &line("m2-0", "m2-1"));
    let started = d.snapshot_ids();
    assert_eq!(started.len(), 1, "{started:?}");
    let out = with_double(&e, &d, &line("m2-1", "m2-0")).output().unwrap();
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("ebs-snapshot:m2-0 (given for disk 1) holds an unfinished ingest of disk 0")
            && text.contains("in another order"),
        "{text}"
    );
    assert_eq!(d.snapshot_ids(), started, "a snapshot was started");
    let out = with_double(&e, &d, &line("m2-0", "m2-1")).output().unwrap();
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    // Snapshots are not read back: the summary does not call them verified bit-for-bit.
    assert!(
        text.contains("ingested set m2 generation 1: 2 disks, each snapshot's blocks match")
            && !text.contains("bit-for-bit"),
        "{text}"
    );
    let ids = d.snapshot_ids();
    assert_eq!(ids.len(), 2, "{ids:?}");
    // Disk 0 went on in the killed run's snapshot; disk 1's is the new one.
    let disk1 = ids.iter().find(|i| **i != started[0]).unwrap();
    // Disk 0 went on from what the killed run put (it said 0 chunks resumed).
    assert!(
        text.lines()
            .any(|l| l.contains("disk 0") && l.contains("written by an earlier run")),
        "{text}"
    );
    // Each disk's line names its snapshot (only stderr and --json had it).
    for (k, id) in [(0, &started[0]), (1, disk1)] {
        assert!(
            text.contains(&format!("into ebs-snapshot:m2-{k}, snapshot {id} (")),
            "{text}"
        );
    }
    check_snapshot_of(&e, &d, &started[0], "d0.raw", None);
    check_snapshot_of(&e, &d, disk1, "d1.raw", None);
    // Finished, then run again with the targets swapped: refused before anything is sent (it
    // made two new snapshots, each under the other disk's name).
    let out = with_double(&e, &d, &line("m2-1", "m2-0")).output().unwrap();
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains(&format!(
            "ebs-snapshot:m2-1 (given for disk 0) names snapshot {disk1}, completed from disk 1"
        )) && text.contains("another order")
            && text.contains("--force to make new snapshots"),
        "{text}"
    );
    assert_eq!(d.snapshot_ids().len(), 2, "a snapshot was started");
    // In the order of that run: both kept, nothing made.
    let out = with_double(&e, &d, &line("m2-0", "m2-1")).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    assert_eq!(d.snapshot_ids().len(), 2, "a snapshot was made again");
}

/// The killed set ingest re-run with its targets swapped and `--force`: the snapshot the
/// killed run left pending for disk 0 is named, with how to remove it (it was left unsaid).
#[test]
fn a_forced_re_run_names_the_snapshot_it_leaves_pending() {
    let e = Env::new();
    e.keygen();
    fs::write(e.p("d0.raw"), image_format::bench::noise(24 << 20, 73)).unwrap();
    fs::write(e.p("d1.raw"), image_format::bench::noise(1 << 20, 74)).unwrap();
    fs::create_dir(e.p("mnt")).unwrap();
    e.capture("dir:mnt", "m3")
        .sources(&["d0.raw", "d1.raw"])
        .ok();
    let d = Double::start(DoubleConfig::default());
    let line = |a: &str, b: &str| {
        e.ingest("dir:mnt", "m3")
            .untrusted()
            .target(&format!("ebs-snapshot:{a}"))
            .target(&format!("ebs-snapshot:{b}"))
    };
    killed_after_some_blocks(&e, &d, &line("m3-0", "m3-1"));
    let started = d.snapshot_ids();
    assert_eq!(started.len(), 1, "{started:?}");
    let out = with_double(&e, &d, &line("m3-1", "m3-0").arg("--force"))
        .output()
        .unwrap();
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let id = &started[0];
    assert!(
        text.contains(&format!(
            "snapshot {id}, which an earlier run into this name started"
        )) && text.contains(&format!("aws ec2 delete-snapshot --snapshot-id {id}")),
        "{text}"
    );
    assert_eq!(d.snapshot_ids().len(), 3);
}

/// The image fails to register after the snapshot completed (EC2 unreachable): the re-run
/// keeps that snapshot and registers the image from it (it made a whole second snapshot and
/// left the first behind, billed). A name too long for the image is refused before anything
/// is sent.
#[test]
fn an_image_that_failed_to_register_is_registered_from_the_kept_snapshot() {
    let e = Env::new();
    captured(&e);
    let d = Double::start(DoubleConfig::default());
    let report = e.p("register-failed.json");
    let report_arg = report.display().to_string();
    let mut first = with_double(
        &e,
        &d,
        &ingest(&e, &["--register-image", "--report", &report_arg]),
    );
    first.env("AWS_ENDPOINT_URL_EC2", "http://127.0.0.1:9");
    let o = first.output().unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", output_text(&o));
    let ids = d.snapshot_ids();
    assert_eq!(ids.len(), 1);
    assert!(d.images().is_empty());
    // The message and the ticket's report name the completed snapshot the re-run keeps, and
    // the report the disk's size.
    assert!(
        output_text(&o).contains(&format!("snapshot {} is complete", ids[0])),
        "{}",
        output_text(&o)
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(v["result"]["snapshot_id"], ids[0].as_str(), "{v}");
    assert!(v["result"]["image_id"].is_null(), "{v}");
    assert_eq!(v["result"]["disk_size"], GIB, "{v}");
    let o = with_double(&e, &d, &ingest(&e, &["--register-image"]))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", output_text(&o));
    assert_eq!(d.snapshot_ids(), ids, "no second snapshot");
    let images = d.images();
    assert_eq!(images.len(), 1, "{images:?}");
    assert_eq!(images.values().next().unwrap().1, ids[0]);
    // NAME-snap-<17 hex> over AWS's 128 characters: refused, nothing sent.
    let long = format!("ebs-snapshot:{}", "w".repeat(110));
    let line = e
        .ingest("dir:mnt", "web01")
        .trust("site.pub")
        .unsealed()
        .target(&long)
        .arg("--register-image");
    let o = with_double(&e, &d, &line).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("at most 128 characters"),
        "{}",
        output_text(&o)
    );
    assert_eq!(d.snapshot_ids(), ids);
}

/// Two killed ingests whose pending snapshots got the same id from two services (the double
/// started again between them, as another endpoint, account or region would): the first one's
/// resume wrote its blocks into the second one's snapshot, and neither could complete, not
/// even with --force. The pending snapshot's description says whose it is: the first starts a
/// new snapshot, and both complete with their own disks.
/// web01's ingest killed with its snapshot pending, and the double started again (as another
/// endpoint, account or region would be): the new double, web01's snapshot id, and the
/// ingest of another capture, `other` (a disk differing in one block, `fill`), whose snapshot
/// will get that same id.
fn an_id_for_two_ingests<'e>(e: &'e Env, fill: u8) -> (Double, String, Line<'e>) {
    captured(e);
    let d = Double::start(DoubleConfig::default());
    killed_after_some_blocks(e, &d, &ingest(e, &[]));
    let id = d.snapshot_ids()[0].clone();
    drop(d);
    let d = Double::start(DoubleConfig::default());
    disk_with_holes(&e.p("other.raw"));
    {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .open(e.p("other.raw"))
            .unwrap();
        f.seek(SeekFrom::Start(600 << 20)).unwrap();
        f.write_all(&[fill; 4096]).unwrap();
    }
    e.capture("dir:mnt", "other")
        .source("other.raw")
        .sign("site.key")
        .ok();
    let other = e
        .ingest("dir:mnt", "other")
        .trust("site.pub")
        .unsealed()
        .target("ebs-snapshot:other");
    (d, id, other)
}

#[test]
fn a_pending_snapshot_id_that_is_another_ingests_is_not_written_into() {
    let e = Env::new();
    let (d, id, other) = an_id_for_two_ingests(&e, 7);
    killed_after_some_blocks(&e, &d, &other);
    assert_eq!(
        d.snapshot_ids(),
        std::slice::from_ref(&id),
        "the same id, another disk"
    );
    let o = with_double(&e, &d, &ingest(&e, &[])).output().unwrap();
    assert!(o.status.success(), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("is another ingest's snapshot now"),
        "{}",
        output_text(&o)
    );
    let o = with_double(&e, &d, &other).output().unwrap();
    assert!(o.status.success(), "{}", output_text(&o));
    let ids = d.snapshot_ids();
    assert_eq!(ids.len(), 2, "{ids:?}");
    check_snapshot_of(&e, &d, &ids[0], "other.raw", None);
    check_snapshot_of(&e, &d, &ids[1], "disk.raw", None);
}

/// An ingest of another capture into the name an unfinished ingest was writing: refused
/// without --force, as into a file (the unfinished one was dropped, exit 0, its pending
/// snapshot left unsaid, and its own re-run started over from nothing); the unfinished one
/// then resumes in its snapshot.
#[test]
fn another_capture_into_an_unfinished_snapshot_name_is_refused() {
    let e = Env::new();
    captured(&e);
    fs::write(e.p("other.raw"), image_format::bench::noise(2 << 20, 75)).unwrap();
    e.capture("dir:mnt", "web02")
        .source("other.raw")
        .sign("site.key")
        .ok();
    let d = Double::start(DoubleConfig::default());
    killed_after_some_blocks(&e, &d, &ingest(&e, &[]));
    let started = d.snapshot_ids();
    assert_eq!(started.len(), 1, "{started:?}");
    let other = e
        .ingest("dir:mnt", "web02")
        .trust("site.pub")
        .unsealed()
        .target("ebs-snapshot:web01");
    let out = with_double(&e, &d, &other).output().unwrap();
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("ebs-snapshot:web01 records an unfinished ingest of another capture")
            && text.contains(&started[0])
            && text.contains("--force"),
        "{text}"
    );
    assert_eq!(d.snapshot_ids(), started, "nothing was sent");
    // The unfinished one goes on in its snapshot.
    let out = with_double(&e, &d, &ingest(&e, &["--json"]))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["resumed_chunks"].as_u64().unwrap_or(0) > 0, "{v}");
    assert_eq!(d.snapshot_ids(), started);
}

/// The same, with the other ingest's snapshot completed by the time the first resumes: it was
/// told as "the pending snapshot an earlier run of this ingest wrote is completed", another
/// disk's snapshot named as this one's. Said as another ingest's, and a new one is written.
#[test]
fn a_snapshot_id_another_ingest_completed_is_named_as_its() {
    let e = Env::new();
    let (d, id, other) = an_id_for_two_ingests(&e, 9);
    let o = with_double(&e, &d, &other).output().unwrap();
    assert!(o.status.success(), "{}", output_text(&o));
    assert_eq!(d.snapshot_ids(), std::slice::from_ref(&id));
    let o = with_double(&e, &d, &ingest(&e, &[])).output().unwrap();
    assert!(o.status.success(), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("is another ingest's snapshot now, completed"),
        "{}",
        output_text(&o)
    );
    let ids = d.snapshot_ids();
    assert_eq!(ids.len(), 2, "{ids:?}");
    check_snapshot_of(&e, &d, &ids[0], "other.raw", None);
    check_snapshot_of(&e, &d, &ids[1], "disk.raw", None);
}
