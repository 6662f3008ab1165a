//! SIGKILL of the simulator (a power cut) in the middle of a capture: the
//! next start recovers (locked again, custody log intact), the capture
//! resumes, and the result ingests bit-identical.

use std::time::Duration;

use crate::appliance_util::*;
use mgear_tests::Line;

#[test]
fn appliance_sigkill_mid_capture_resume_identical() {
    let mut lab = Lab::new(64);
    lab.keygen();
    lab.make_disk(12, 5);
    lab.start();
    lab.provision_and_unlock();

    let slow_args = ["--rate-limit", "3MiB/s", "--checkpoint-bytes", "1MiB"];
    let mut capture = lab
        .capture_line()
        .args(&slow_args)
        .command()
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1800));
    lab.kill();
    // The capture loses its medium and must fail promptly with an error,
    // not hang (it once deadlocked in its pipeline after a write error).
    let t0 = std::time::Instant::now();
    loop {
        if let Some(st) = capture.try_wait().unwrap() {
            assert!(
                !st.success(),
                "capture finished before the power cut; the scenario needs it interrupted"
            );
            break;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            capture.kill().unwrap();
            capture.wait().unwrap();
            panic!("mgear capture did not exit after the appliance lost power");
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    // It says what happened and that the same command resumes (it said "Broken pipe").
    let said = capture.wait_with_output().unwrap();
    let said = text(&said.stdout);
    assert!(
        said.contains("does not answer any more")
            && said.contains("resumes from its last checkpoint"),
        "{said}"
    );

    lab.start();
    assert_eq!(lab.state(), "Locked", "unlock must not survive a power cut");
    let log = lab.appliance_json(&["log", "--verify"]);
    assert_eq!(log["verified"], true, "{log}");
    lab.appliance_ok(&["unlock", "--pin-file", "pin"]);
    // Locked from another shell part-way: said so, with the way on (it said "read-only").
    let capture = lab
        .capture_line()
        .args(&slow_args)
        .command()
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    lab.appliance_ok(&["lock"]);
    let said = capture.wait_with_output().unwrap();
    assert!(
        !said.status.success(),
        "the capture finished before the lock"
    );
    let said = text(&said.stdout);
    assert!(
        said.contains("is locked now") && said.contains("resumes from its last checkpoint"),
        "{said}"
    );
    // Its next step is the appliance's (the medium's "refuses writes: make it writable"
    // stood beside "unlock it").
    assert!(
        said.contains("unlock it") && !said.contains("make it writable"),
        "{said}"
    );
    lab.appliance_ok(&["unlock", "--pin-file", "pin"]);
    let c = lab.capture();
    assert_eq!(c["generation"], 1, "{c}");

    lab.appliance_ok(&["seal"]);
    lab.appliance_ok(&["arrival"]);
    let out = lab.ingest(&[]);
    assert!(out.status.success(), "ingest failed: {}", text(&out.stderr));
    same_file(&lab.p("disk.raw"), &lab.p("vol.raw"));
    lab.stop();
    // The resume left the file system as a clean unmount does: the power cut's dirty mark
    // stayed (the boot sector then differed from its backup), and a sealed medium is never
    // written again, so the shipment went out failing `fsck.fat -n`.
    let fsck = std::process::Command::new("fsck.fat")
        .arg("-n")
        .arg(lab.p("medium.img"))
        .output()
        .expect("fsck.fat (Debian dosfstools)");
    assert!(
        fsck.status.success() && !text(&fsck.stdout).contains("Dirty bit"),
        "{}{}",
        text(&fsck.stdout),
        text(&fsck.stderr)
    );
}

/// One writer on the appliance's medium at a time: a second capture, or a
/// `capture --abort` of the running one, from another shell is refused
/// (exit 3, naming the holder) instead of writing the same FAT beside it, and
/// the first capture finishes and ingests bit-identical. (Both used to
/// report success over a damaged medium.)
#[test]
fn a_second_writer_on_the_appliance_is_refused_while_a_capture_runs() {
    let mut lab = Lab::new(64);
    lab.keygen();
    lab.make_disk(12, 6);
    lab.start();
    lab.provision_and_unlock();
    let mut capture = lab
        .capture_line()
        .args(&["--rate-limit", "2MiB/s"])
        .command()
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // 12 MiB at 2 MiB/s: about 6 s of capture, the medium held all along.
    std::thread::sleep(Duration::from_millis(1500));
    let second = Line::capture(&lab, "db02")
        .source("disk.raw")
        .appliance(&lab.tty())
        .run();
    let abort = Line::new(&lab, &["capture", "--abort", "--name", "web01"])
        .appliance(&lab.tty())
        .run();
    // The appliance's own verify and seal: the generation being written is unfinished until
    // the capture ends (verify called it a problem, "resume it or --abort", and its custody
    // log kept a failed verification for good).
    let verify = lab.appliance(&["verify"]);
    let seal = lab.appliance(&["seal"]);
    assert!(
        capture.try_wait().unwrap().is_none(),
        "the capture finished before the others ran; the scenario needs it running"
    );
    let done = capture.wait_with_output().unwrap();
    assert!(
        done.status.success(),
        "the first capture: {}",
        text(&done.stderr)
    );
    for o in [&second, &abort] {
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(3), "{err}");
        assert!(err.contains("is in use by pid"), "{err}");
        assert!(
            err.contains("one command writes an appliance's medium at a time"),
            "{err}"
        );
    }
    for o in [&verify, &seal] {
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(3), "{err}");
        assert!(
            err.contains("is in use by pid") && err.contains("capture"),
            "{err}"
        );
    }
    let log = text(&lab.appliance_ok(&["log"]).stdout);
    assert!(!log.contains("problem"), "{log}");
    let v = lab.appliance_json(&["verify"]);
    assert!(v["problems"].as_array().unwrap().is_empty(), "{v}");
    assert_eq!(v["captures"], 1, "{v}");
    lab.appliance_ok(&["seal"]);
    lab.appliance_ok(&["arrival"]);
    let out = lab.ingest(&[]);
    assert!(out.status.success(), "ingest failed: {}", text(&out.stderr));
    same_file(&lab.p("disk.raw"), &lab.p("vol.raw"));
    lab.stop();
}

/// The appliance loses power while ingest reads it: an I/O error (exit 3, never "refused":
/// nothing was found wrong) that says the appliance went away, and the same command then
/// finishes the disk.
#[test]
fn appliance_power_lost_under_ingest_is_an_io_error_and_the_ingest_resumes() {
    let mut lab = Lab::new(64);
    lab.sealed(24);
    lab.appliance_ok(&["arrival"]);
    let child = Line::ingest(&lab, "web01")
        .args(&["--trust-appliance", &lab.fingerprint()])
        .appliance(&lab.tty())
        .target("file:vol.raw")
        .args(&["--rate-limit", "2MiB/s", "--checkpoint-bytes", "1MiB"])
        .spawn();
    // 24 MiB at 2 MiB/s: well inside the writes.
    std::thread::sleep(Duration::from_millis(2500));
    lab.kill();
    let out = child.wait_with_output().unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(!err.contains("refused"), "{err}");
    assert!(
        err.contains("was unplugged or lost power")
            || err.contains("the appliance stopped answering"),
        "{err}"
    );
    assert!(
        !lab.p("vol.raw").exists(),
        "an unfinished volume under its own name"
    );
    lab.start();
    let out = Line::ingest(&lab, "web01")
        .args(&["--trust-appliance", &lab.fingerprint()])
        .appliance(&lab.tty())
        .target("file:vol.raw")
        .run();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(" done before the resume, ")
            && text(&out.stdout).contains(" this run ("),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(
        std::fs::read(lab.p("vol.raw")).unwrap(),
        std::fs::read(lab.p("disk.raw")).unwrap()
    );
    lab.stop();
}
