//! Output a ticket can rely on (#13): the ingest report's `volume_sha256`
//! (asked for with `--volume-sha256`) is what `sha256sum` of the written
//! volume prints, and `serve`, `sync`
//! and `cutover` speak the one `--json` style of every command (envelope
//! with `ok` and `command` first, errors as one JSON object with the exit
//! code).

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};

use mgear_tests::{output_text, Background, Env};
use rand::{RngCore, SeedableRng};
use serde_json::Value;

/// A 6 MiB disk: random data, a zero hole (a sparse range on the volume)
/// and a short tail chunk.
fn disk(e: &Env, name: &str) {
    let mut d = vec![0u8; (6 << 20) + 12345];
    let mut rng = rand::rngs::SmallRng::seed_from_u64(13);
    rng.fill_bytes(&mut d[..2 << 20]);
    rng.fill_bytes(&mut d[4 << 20..]);
    std::fs::write(e.p(name), d).unwrap();
}

fn sha256sum(e: &Env, name: &str) -> String {
    let o = Command::new("sha256sum")
        .arg(e.p(name))
        .output()
        .expect("sha256sum (coreutils)");
    assert!(o.status.success(), "{}", output_text(&o));
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// One JSON object on stdout, in the envelope.
fn envelope(o: &Output, command: &str) -> Value {
    let v: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not one JSON object ({e}): {}", output_text(o)));
    let head = format!("{{\"ok\":{},\"command\":\"{command}\",", o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stdout).starts_with(&head),
        "{head}...: {}",
        output_text(o)
    );
    v
}

/// A failed command's JSON error, with its exit code and class.
fn json_error(o: &Output, command: &str, code: i32, kind: &str) -> Value {
    assert_eq!(o.status.code(), Some(code), "{}", output_text(o));
    let v = envelope(o, command);
    assert_eq!(v["error"]["code"], code, "{v}");
    assert_eq!(v["error"]["kind"], kind, "{v}");
    assert!(!v["error"]["hint"].as_str().unwrap().is_empty(), "{v}");
    v
}

/// Captures `disk.raw` signed and ingests it with a report and the volume's SHA-256; the
/// ingest's output.
fn capture_and_ingest(e: &Env) -> std::process::Output {
    e.keygen();
    e.ok(&["keygen", "--signing", "--out", "site.key"]);
    let m = e.fat("medium.img", "256MiB");
    e.capture(&m, "web01")
        .source("disk.raw")
        .sign("site.key")
        .ok();
    e.ingest(&m, "web01")
        .trust("site.pub")
        .target("file:vol.raw")
        .args(&["--report", "ingest.json", "--volume-sha256"])
        .ok()
}

/// `ingest --boot --report`: a boot that does not prove itself makes the report `ok:false`
/// with a `booted NO` line (it said ok and nothing of the boot).
#[test]
fn an_ingest_report_says_a_failed_boot() {
    let e = Env::new();
    disk(&e, "disk.raw");
    let _ = capture_and_ingest(&e);
    std::fs::remove_file(e.p("vol.raw")).unwrap();
    let o = e
        .ingest("fat:medium.img", "web01")
        .trust("site.pub")
        .target("file:vol.raw")
        .args(&[
            "--report",
            "boot.json",
            "--boot",
            "--wait-for",
            "never-printed",
            "--timeout",
            "60",
        ])
        .run();
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    let r: Value = serde_json::from_slice(&std::fs::read(e.p("boot.json")).unwrap()).unwrap();
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["result"]["booted"], false, "{r}");
    let txt = std::fs::read_to_string(e.p("boot.txt")).unwrap();
    assert!(txt.contains("booted          NO"), "{txt}");
}

#[test]
fn ingest_report_carries_the_sha256_of_the_volume() {
    let e = Env::new();
    disk(&e, "disk.raw");
    let said = capture_and_ingest(&e);
    let sum = sha256sum(&e, "vol.raw");
    assert_eq!(sum, sha256sum(&e, "disk.raw"));
    // The human summary says it too (it was only in JSON and the report).
    let said = String::from_utf8_lossy(&said.stdout);
    assert!(said.contains(&format!("volume sha256  {sum}")), "{said}");
    let r: Value = serde_json::from_slice(&std::fs::read(e.p("ingest.json")).unwrap()).unwrap();
    assert_eq!(r["digests"]["volume_sha256"], sum.as_str(), "{r}");
    assert_eq!(r["result"]["volume_sha256"], sum.as_str(), "{r}");
    let txt = std::fs::read_to_string(e.p("ingest.txt")).unwrap();
    assert!(txt.contains(&format!("volume sha256   {sum}")), "{txt}");

    // A qcow2 target: the digest is of the disk it holds, not of the container.
    std::fs::remove_file(e.p("vol.raw")).unwrap();
    let o = e
        .ingest("fat:medium.img", "web01")
        .trust("site.pub")
        .target("qcow2:vol.qcow2")
        .args(&["--json", "--volume-sha256"])
        .run();
    let v = envelope(&o, "ingest");
    // qcow2 rounds its virtual size up to whole sectors: the digest covers
    // the disk's own bytes.
    let size = v["disk_size"].as_u64().unwrap().to_string();
    for args in [
        vec!["qemu-img", "convert", "-O", "raw", "vol.qcow2", "back.raw"],
        vec!["truncate", "-s", &size, "back.raw"],
    ] {
        let o = Command::new(args[0])
            .args(&args[1..])
            .current_dir(e.p(""))
            .output()
            .expect(args[0]);
        assert!(o.status.success(), "{args:?}: {}", output_text(&o));
    }
    assert_eq!(
        v["volume_sha256"],
        sha256sum(&e, "back.raw").as_str(),
        "{v}"
    );
    assert_eq!(v["volume_sha256"], sum.as_str(), "{v}");

    // Without --volume-sha256 every byte is still read back and compared,
    // and the report says so without a digest (vol.raw was removed above).
    let o = e
        .ingest("fat:medium.img", "web01")
        .trust("site.pub")
        .target("file:vol.raw")
        .arg("--json")
        .run();
    let v = envelope(&o, "ingest");
    assert_eq!(v["verified"], true, "{v}");
    assert!(v["volume_sha256"].is_null(), "{v}");
    assert_eq!(sha256sum(&e, "vol.raw"), sum);
}

/// `mgear serve ... --json` in the background: its first line is the
/// `listening` event in the envelope; returns it, its address and the rest
/// of its stdout (read once it has exited).
fn serve(e: &Env, extra: &[&str]) -> (Background, String, BufReader<std::process::ChildStdout>) {
    let mut child = e
        .serve("fat:medium.img", "web01")
        .trust("site.pub")
        .arg("--json")
        .args(extra)
        .command()
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn serve");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).expect("serve prints a line");
    let v = event(&line);
    assert_eq!(v["event"], "listening", "{v}");
    let addr = v["address"].as_str().unwrap().to_string();
    (Background(child), addr, out)
}

/// One line of `serve --json`: an event in the envelope.
fn event(line: &str) -> Value {
    let v: Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
    assert!(
        line.starts_with(r#"{"ok":true,"command":"serve","#),
        "{line}"
    );
    v
}

/// What an exited `serve --json` printed after `listening`: exactly one
/// event, `stopped`; returns it.
fn stopped_event(rest: &mut BufReader<std::process::ChildStdout>) -> Value {
    let mut lines = String::new();
    std::io::Read::read_to_string(rest, &mut lines).unwrap();
    let events: Vec<Value> = lines.lines().map(event).collect();
    assert_eq!(events.len(), 1, "{lines}");
    assert_eq!(events[0]["event"], "stopped", "{lines}");
    events[0].clone()
}

#[test]
fn serve_sync_and_cutover_speak_the_one_json_style() {
    let e = Env::new();
    let sample = e.p("disk.raw");
    e.ok(&[
        "boot",
        "--build-sample",
        sample.to_str().unwrap(),
        "--marker",
        "before",
    ]);
    let _ = capture_and_ingest(&e);
    e.ok(&[
        "boot",
        "--build-sample",
        sample.to_str().unwrap(),
        "--marker",
        "after",
    ]);

    // sync --json: one object in the envelope.
    let (mut served, addr, mut rest) = serve(&e, &["--once"]);
    let o = e.run(&[
        "sync", "--source", "disk.raw", "--to", &addr, "--name", "web01", "--sign", "site.key",
        "--json",
    ]);
    let s = envelope(&o, "sync");
    assert_eq!(s["verified"], true, "{s}");
    assert!(s["chunks_sent"].as_u64().unwrap() > 0, "{s}");
    assert!(served.0.wait().unwrap().success());
    // serve's last event says what it applied.
    let last = stopped_event(&mut rest);
    assert_eq!(last["ok"], true, "{last}");
    assert_eq!(last["chunks"], s["chunks_sent"], "{last}");

    // Errors as JSON: a refused sync (no key for that name) and a usage error.
    let o = e.run(&[
        "sync", "--source", "disk.raw", "--to", &addr, "--name", "db02", "--json",
    ]);
    let v = json_error(&o, "sync", 2, "usage");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("key cache"),
        "{v}"
    );
    let o = e.run(&[
        "serve",
        "--target",
        "file:vol.raw",
        "--medium",
        "fat:medium.img",
        "--name",
        "web01",
        "--identity",
        "target.key",
        "--trust",
        "site.pub",
        "--listen",
        "nowhere",
        "--json",
    ]);
    json_error(&o, "serve", 2, "usage");
    // Nobody listens there any more: an I/O error.
    let o = e.run(&[
        "sync",
        "--source",
        "disk.raw",
        "--to",
        &addr,
        "--name",
        "web01",
        "--sign",
        "site.key",
        "--retries",
        "0",
        "--json",
    ]);
    json_error(&o, "sync", 3, "io");

    // cutover --json: one object; the syncs inside carry no envelope of their own,
    // and what the quiesce command prints goes to stderr.
    let (mut served, addr, mut rest) = serve(&e, &[]);
    let o = e.run(&[
        "cutover",
        "--source",
        "disk.raw",
        "--to",
        &addr,
        "--name",
        "web01",
        "--quiesce",
        "echo quiescing now",
        "--boot-target",
        "file:vol.raw",
        "--wait-for",
        "MGEAR-BOOT-OK after",
        "--boot-timeout",
        "300",
        "--sign",
        "site.key",
        "--json",
    ]);
    let c = envelope(&o, "cutover");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("quiescing now"),
        "{}",
        output_text(&o)
    );
    assert_eq!(c["final_sync"]["verified"], true, "{c}");
    assert!(c["downtime_seconds"].as_f64().unwrap() > 0.0, "{c}");
    assert!(c["final_sync"].get("command").is_none(), "{c}");
    // A quiesce hook that fails is the environment's failure (3), as JSON too.
    let o = e.run(&[
        "cutover",
        "--source",
        "disk.raw",
        "--to",
        &addr,
        "--name",
        "web01",
        "--quiesce",
        "false",
        "--boot-target",
        "file:vol.raw",
        "--no-presync",
        "--sign",
        "site.key",
        "--json",
    ]);
    let v = json_error(&o, "cutover", 3, "io");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--quiesce"),
        "{v}"
    );

    // One disk of a machine set cut over alone is said before anything is quiesced (it went
    // straight on: the set's other disks got no final sync and no boot).
    let o = e.run(&[
        "cutover",
        "--source",
        "disk.raw",
        "--to",
        &addr,
        "--name",
        "vm3.d0",
        "--quiesce",
        "false",
        "--boot-target",
        "file:vol.raw",
        "--no-presync",
        "--sign",
        "site.key",
    ]);
    assert_ne!(o.status.code(), Some(0), "{}", output_text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(
            "warning: vm3.d0 is disk 0 of machine set vm3: this cutover moves that disk alone"
        ),
        "{}",
        output_text(&o)
    );
    // A data disk is refused before anything is done: its boot alone could never prove
    // anything, and the source was quiesced for it.
    let o = e.run(&[
        "cutover",
        "--source",
        "disk.raw",
        "--to",
        &addr,
        "--name",
        "vm3.d1",
        "--quiesce",
        "touch quiesced",
        "--boot-target",
        "file:vol.raw",
        "--sign",
        "site.key",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("a data disk: a cutover boots the disk it moves"),
        "{}",
        output_text(&o)
    );
    assert!(!e.p("quiesced").exists());

    // The serve, stopped by SIGTERM (as a service manager stops it), ends
    // its stream with `stopped` and exit 0.
    let term = Command::new("kill")
        .args(["-TERM", &served.0.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    assert!(served.0.wait().unwrap().success());
    let last = stopped_event(&mut rest);
    assert!(last["chunks"].is_u64(), "{last}");
}

/// A standard output that cannot be written (a full disk: `/dev/full`) ends with exit 3 and
/// says so, after the work is done: a key pair written by `keygen` stays, and nothing panics
/// (exit 101 with a backtrace once read as "keygen failed", and its re-run was refused).
#[test]
fn a_full_standard_output_is_an_io_error_not_a_panic() {
    let e = Env::new();
    let full = || {
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap()
    };
    let o = e
        .cmd(&["keygen", "--out", "t.key"])
        .stdout(full())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(err.contains("could not write the output"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(e.p("t.key").exists() && e.p("t.pub").exists());
    // It says the keys stand (it said "run it again", and the re-run is refused: they exist).
    assert!(
        err.contains("the key files were written") && !err.contains("run it again"),
        "{err}"
    );
    // With --json (whose errors go to stdout too) the same exit.
    let o = e
        .cmd(&["keys", "list", "--json"])
        .stdout(full())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", output_text(&o));
}

/// A reader that went away before a capture printed its result (`| head` done early): the
/// capture stands, exit 3, and stderr says that only the printed output was lost (it said
/// nothing, and a script re-ran the capture into "already captured"). Help and version
/// written to a full disk are exit 3 too (they said 0).
#[test]
fn a_closed_standard_output_after_a_capture_is_said_on_standard_error() {
    let e = Env::new();
    e.keygen();
    disk(&e, "a.raw");
    let m = e.fat("m.img", "64MiB");
    let mut child = e
        .capture(&m, "pp")
        .source("a.raw")
        .command()
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(
        err.contains("could not write the output")
            && err.contains("what the command did before that stands"),
        "{err}"
    );
    let i = e.json(&["inspect", "--medium", &m]);
    assert_eq!(
        i["captures"][0]["generations"][0]["state"], "complete",
        "{i}"
    );
    for args in [&["--version"][..], &["capture", "--help"]] {
        let o = e
            .cmd(args)
            .stdout(
                std::fs::OpenOptions::new()
                    .write(true)
                    .open("/dev/full")
                    .unwrap(),
            )
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(3), "{args:?}: {}", output_text(&o));
    }
}

/// A standard error that cannot be written (`2>&1 | head -1` once the reader left, a full
/// disk) loses the messages, not the work: a set capture of two disks went on to panic
/// between them (exit 101, disk 1 never captured).
#[test]
fn a_standard_error_that_cannot_be_written_does_not_stop_a_capture() {
    let e = Env::new();
    e.keygen();
    disk(&e, "a.raw");
    disk(&e, "b.raw");
    let m = e.fat("m.img", "64MiB");
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let o = e
        .capture(&m, "pp")
        .sources(&["a.raw", "b.raw"])
        .command()
        .stderr(full)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    let i = e.json(&["inspect", "--medium", &m]);
    assert_eq!(i["sets"][0]["generations"][0]["complete"], true, "{i}");
}

/// `--version --json` answers in the envelope like every other command (it printed text).
#[test]
fn the_version_is_json_with_json() {
    let e = Env::new();
    for args in [["--version", "--json"], ["--json", "--version"]] {
        let o = e.run(&args);
        assert!(o.status.success(), "{}", output_text(&o));
        let v = envelope(&o, "mgear");
        assert_eq!(v["version"], env!("CARGO_PKG_VERSION"), "{v}");
    }
    let text = e.run(&["--version"]);
    assert!(String::from_utf8_lossy(&text.stdout).starts_with("mgear "));
}

/// A documented variable set to what it does not take is refused before anything runs (exit
/// 2, naming it): `MGEAR_NBD_TIMEOUT=abc` waited the default 300 s without a word,
/// `MGEAR_FSCK_FAT_TIMEOUT=0` called a clean medium damaged, and an empty `MGEAR_APPLIANCE`
/// was refused as a `--port` never given.
#[test]
fn a_documented_variable_with_a_value_it_does_not_take_is_refused() {
    let e = Env::new();
    for (var, value, args) in [
        (
            "MGEAR_NBD_TIMEOUT",
            "abc",
            &["inspect", "--medium", "fat:none.img"][..],
        ),
        (
            "MGEAR_STOP_GRACE",
            "-1",
            &["inspect", "--medium", "fat:none.img"],
        ),
        (
            "MGEAR_FSCK_FAT_TIMEOUT",
            "0",
            &["medium", "fsck", "--medium", "fat:none.img"],
        ),
        ("MGEAR_APPLIANCE", "", &["appliance", "info"]),
    ] {
        let o = e.cmd(args).env(var, value).output().unwrap();
        assert_eq!(
            o.status.code(),
            Some(2),
            "{var}={value}: {}",
            output_text(&o)
        );
        assert!(
            output_text(&o).contains(var),
            "{var}={value}: {}",
            output_text(&o)
        );
    }
    let o = e
        .cmd(&["keys", "list"])
        .env("MGEAR_NBD_TIMEOUT", "20")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    // A malformed capture id is said so (it was "no cached key matches").
    let o = e
        .cmd(&["keys", "forget", "--capture-id", "zz"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("is not a capture id"),
        "{}",
        output_text(&o)
    );
}

/// A cutover of one disk of a set that then fails: its warning is in the `--json` error object
/// too (it was on stderr only; SYNC.md: "the JSON report lists that warning").
#[test]
fn a_failed_cutover_of_one_set_disk_keeps_its_warning_in_json() {
    let e = Env::new();
    e.keygen();
    e.ok(&["keygen", "--signing", "--out", "site.key"]);
    std::fs::write(e.p("d0.raw"), vec![1u8; 1 << 20]).unwrap();
    std::fs::write(e.p("x.raw"), vec![1u8; 1 << 20]).unwrap();
    #[rustfmt::skip]
    let o = e.cmd(&["cutover", "--json", "--name", "vm3.d0", "--source", "d0.raw", "--to", "127.0.0.1:1", "--sign", "site.key", "--quiesce", "true", "--resume", "true", "--boot-target", "file:x.raw"]).output().unwrap();
    assert_ne!(o.status.code(), Some(0), "{}", output_text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ok"], false, "{v}");
    assert!(
        v["warnings"][0]
            .as_str()
            .is_some_and(|w| w.contains("is disk 0 of machine set vm3")),
        "{v}"
    );
}

/// Every `"ok":false` carries the envelope's `error` (code, kind, message, hint): a verify
/// that found a capture nobody pinned vouches for, and a plan that does not fit, printed
/// `"ok":false` and nothing a script reading `error` could find. And an ingest's `--report`
/// never replaces the capture's own report (the receipt the target pins its commit by).
#[test]
fn every_failed_verdict_carries_its_error_and_reports_keep_their_kind() {
    let e = Env::new();
    disk(&e, "disk.raw");
    e.keygen();
    e.ok(&["keygen", "--signing", "--out", "site.key"]);
    e.ok(&["keygen", "--signing", "--out", "other.key"]);
    let m = e.fat("medium.img", "40MiB");
    e.capture(&m, "web01")
        .source("disk.raw")
        .sign("site.key")
        .args(&["--report", "receipt.json"])
        .ok();
    let o = e.run(&[
        "verify",
        "--medium",
        &m,
        "--identity",
        "target.key",
        "--trust",
        "other.pub",
        "--json",
    ]);
    let v = json_error(&o, "verify", 1, "failure");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("not trusted: ") && message.contains("which is not pinned"),
        "{v}"
    );
    // Every record checked out: the hint is about trust, not "the data did not check out".
    let hint = v["error"]["hint"].as_str().unwrap();
    assert!(hint.contains("do not ingest it until it is trusted"), "{v}");
    assert!(!hint.contains("did not check out"), "{v}");
    std::fs::write(e.p("big.raw"), vec![0x5au8; 48 << 20]).unwrap();
    let o = e
        .capture(&m, "big")
        .source("big.raw")
        .args(&["--dry-run", "--no-compress", "--json"])
        .run();
    let v = json_error(&o, "capture", 3, "io");
    assert_eq!(v["fits"], false, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("does not fit"),
        "{v}"
    );
    // What to do is the run's advice (it was the I/O class's "reconnect it").
    assert!(
        v["error"]["hint"]
            .as_str()
            .unwrap()
            .starts_with("give one more medium"),
        "{v}"
    );
    let receipt = std::fs::read(e.p("receipt.json")).unwrap();
    let o = e
        .ingest(&m, "web01")
        .trust("site.pub")
        .target("file:vol.raw")
        .args(&["--report", "receipt.json"])
        .run();
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("is not a MotionGear ingest report"),
        "{}",
        output_text(&o)
    );
    assert_eq!(std::fs::read(e.p("receipt.json")).unwrap(), receipt);
    // A refused ingest's report names the signature it found, by a key not pinned, and the
    // generation it checked (they were "signatures none" and null digests).
    let o = e
        .ingest(&m, "web01")
        .trust("other.pub")
        .target("file:vol.raw")
        .args(&["--report", "refused.json"])
        .run();
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    let r: Value = serde_json::from_slice(&std::fs::read(e.p("refused.json")).unwrap()).unwrap();
    assert!(
        r["signatures"]
            .to_string()
            .contains("signature valid, key NOT pinned"),
        "{r}"
    );
    assert!(r["digests"]["manifest_root"].is_string(), "{r}");
    // The capture report's summary says its chunk counts, and a kept re-run's says kept.
    let txt = std::fs::read_to_string(e.p("receipt.txt")).unwrap();
    assert!(txt.contains("chunks          "), "{txt}");
    e.ingest(&m, "web01")
        .trust("site.pub")
        .target("file:vol.raw")
        .args(&["--report", "first.json"])
        .ok();
    e.ingest(&m, "web01")
        .trust("site.pub")
        .target("file:vol.raw")
        .args(&["--report", "kept.json"])
        .ok();
    let txt = std::fs::read_to_string(e.p("kept.txt")).unwrap();
    assert!(txt.contains("kept            yes"), "{txt}");
}
