//! The appliance's whole journey through the real simulator (pty console,
//! NBD medium): provision, unlock, capture through the appliance, seal,
//! writes refused by `qemu-io` and `nbdcopy`, arrival, bit-identical ingest.

use std::process::Command;

use crate::appliance_util::*;
use mgear_tests::Line;

#[test]
fn appliance_journey_provision_capture_seal_refuse_arrival_ingest() {
    let mut lab = Lab::new(64);
    lab.keygen();
    lab.make_disk(6, 1);
    lab.start();

    // Factory: no identity, nothing accepted but provisioning.
    assert_eq!(lab.state(), "Factory");
    let out = lab.appliance(&["unlock", "--pin-file", "pin"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("NotProvisioned"),
        "{}",
        text(&out.stderr)
    );

    lab.provision_and_unlock();
    let info = lab.appliance_json(&["info"]);
    assert!(
        info["medium_locator"]
            .as_str()
            .unwrap()
            .contains("appliance.sock"),
        "{info}"
    );
    assert_eq!(info["medium_bytes"], 64u64 << 20);
    // An empty medium is no pass, and its JSON says why (it had empty `problems` only).
    let out = lab.appliance(&["--json", "verify"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(v["ok"], false, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("holds no capture")),
        "{v}"
    );
    // A second provisioning is refused.
    assert_eq!(
        lab.appliance(&["provision", "--pin-file", "pin"])
            .status
            .code(),
        Some(2)
    );

    let c = lab.capture();
    assert_eq!(c["generation"], 1, "{c}");

    let v = lab.appliance_json(&["verify"]);
    assert!(v["problems"].as_array().unwrap().is_empty(), "{v}");
    assert!(v["records"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["captures"], 1, "{v}");

    let s = lab.appliance_json(&["seal"]);
    assert_eq!(lab.state(), "Sealed");
    assert_eq!(s["attestation"]["body"]["kind"], "Seal");

    // Writes through the block service are refused, by any NBD client.
    let before = std::fs::read(lab.p("medium.img")).unwrap();
    let q = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write -P 0x55 1M 64k"])
        .arg(lab.nbd_url())
        .output()
        .expect("qemu-io (Debian qemu-utils)");
    let qerr = text(&q.stdout) + &text(&q.stderr);
    // The export is read-only once sealed: qemu refuses to open it for writing at all.
    assert!(
        qerr.contains("Operation not permitted") || qerr.contains("Permission denied"),
        "qemu-io write was not refused: {qerr}"
    );
    std::fs::write(lab.p("junk"), vec![0x77u8; 1 << 20]).unwrap();
    let n = Command::new("nbdcopy")
        .arg(lab.p("junk"))
        .arg(lab.nbd_url())
        .output()
        .expect("nbdcopy (Debian libnbd-bin)");
    assert!(
        !n.status.success(),
        "nbdcopy onto a sealed medium succeeded"
    );
    assert_eq!(
        std::fs::read(lab.p("medium.img")).unwrap(),
        before,
        "the sealed medium changed"
    );
    // mgear's own writes are refused up front as the appliance's state, not as an I/O
    // error to retry ("read-only ... run the same command again").
    let tty = lab.tty();
    for (args, what) in [
        (
            vec![
                "medium",
                "rm",
                "--appliance",
                &tty,
                "--name",
                "web01",
                "--force",
            ],
            "its medium is read-only for good, so a removal (medium rm) is refused",
        ),
        (
            vec!["medium", "fsck", "--appliance", &tty, "--repair"],
            "its medium is read-only for good, so a repair (medium fsck --repair) is refused",
        ),
    ] {
        let out = lab.run(&args);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains("is sealed") && text(&out.stderr).contains(what),
            "{}",
            text(&out.stderr)
        );
    }
    assert_eq!(
        std::fs::read(lab.p("medium.img")).unwrap(),
        before,
        "the sealed medium changed"
    );
    // Reads still work (the datacenter reads the medium through the appliance).
    let r = Command::new("qemu-img")
        .args(["info"])
        .arg(lab.nbd_url())
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", text(&r.stderr));

    // Ingest needs the arrival attestation too.
    let out = lab.ingest(&[]);
    assert!(!out.status.success(), "ingest before arrival succeeded");
    assert!(
        text(&out.stderr).contains("arrival"),
        "{}",
        text(&out.stderr)
    );

    let a = lab.appliance_json(&["arrival"]);
    assert!(a["problems"].as_array().unwrap().is_empty(), "{a}");
    assert_eq!(lab.state(), "Arrived");

    let out = lab.ingest(&[]);
    assert!(
        out.status.success(),
        "ingest failed: {}\n{}",
        text(&out.stderr),
        lab.sim_log()
    );
    same_file(&lab.p("disk.raw"), &lab.p("vol.raw"));
    // Pinned by its public key (the seal's `identity`) instead of its fingerprint: said as
    // the operator's mistake, exit 2 (it was "not pinned", exit 1, "ask for the shipment").
    let pk = lab.appliance_json(&["info"])["identity_pubkey"]
        .as_str()
        .unwrap()
        .to_string();
    let out = Line::ingest(&lab, "web01")
        .args(&["--trust-appliance", &pk])
        .appliance(&lab.tty())
        .target("file:vol2.raw")
        .run();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("public key, not its fingerprint"),
        "{}",
        text(&out.stderr)
    );

    // Attestations can be saved as files for a datacenter without the appliance.
    lab.appliance_ok(&["attestations", "--out", "att"]);
    assert!(lab.p("att/SEAL").exists() && lab.p("att/ARRIVAL").exists());

    // The custody log tells the story and verifies.
    let log = lab.appliance_json(&["log", "--verify"]);
    assert_eq!(log["verified"], true, "{log}");
    let events = log["entries"].to_string();
    for e in ["Provisioned", "Unlock", "Verify", "Seal", "Arrival"] {
        assert!(events.contains(e), "custody log lacks {e}: {events}");
    }
    lab.stop();
}

/// What a new operator met between seal and arrival, and with a second simulator:
/// - ingest before `arrival` said "no seal/arrival attestations found" of an appliance holding
///   its seal, and pointed at `--allow-unsealed`; it now names the missing arrival check and
///   its command;
/// - verify warned about `--allow-unsealed`, a flag it does not have;
/// - `lock` on a sealed appliance printed "locked" and then failed (two JSON objects);
/// - a second simulator on the same medium and state started, and wrote to the sealed medium.
#[test]
fn before_arrival_the_next_step_is_named_and_a_sealed_appliance_stays_one() {
    let mut lab = Lab::new(64);
    lab.sealed(3);
    let out = lab.ingest(&["--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let msg = v["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("has not checked it on arrival")
            && msg.contains(&format!("mgear appliance --port {} arrival", lab.tty())),
        "{v}"
    );
    assert!(
        v["error"]["hint"]
            .as_str()
            .unwrap_or_default()
            .contains("--attestations DIR"),
        "{v}"
    );
    assert!(!lab.p("vol.raw").exists());

    let tty = lab.tty();
    #[rustfmt::skip]
    let out = lab.run(&["verify", "--appliance", &tty, "--identity", "target.key", "--trust-appliance", &lab.fingerprint()]);
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(!all.contains("--allow-unsealed"), "{all}");
    assert!(
        all.contains("ingest requires the seal and arrival"),
        "{all}"
    );

    let out = lab.appliance(&["--json", "lock"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(v["ok"], false, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("nothing to lock"),
        "{v}"
    );
    assert_eq!(lab.state(), "Sealed");

    let second = Command::new(mgear_tests::bin("mgear-appliance-sim"))
        .args(["--medium", &lab.s("medium.img"), "--state", &lab.s("state")])
        .args(["--console-link", &lab.s("b.tty"), "--nbd", &lab.s("b.sock")])
        .arg("--test-timing")
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(1));
    assert!(
        text(&second.stderr).contains("in use by another mgear-appliance-sim"),
        "{}",
        text(&second.stderr)
    );
    // The same medium under a state directory of its own: refused, and the directory it
    // made is gone again (it looked like a second appliance's state).
    let third = Command::new(mgear_tests::bin("mgear-appliance-sim"))
        .args([
            "--medium",
            &lab.s("medium.img"),
            "--state",
            &lab.s("state-c"),
        ])
        .args(["--console-link", &lab.s("c.tty"), "--nbd", &lab.s("c.sock")])
        .arg("--test-timing")
        .output()
        .unwrap();
    assert_eq!(third.status.code(), Some(1));
    assert!(
        text(&third.stderr).contains("medium.img is in use by another"),
        "{}",
        text(&third.stderr)
    );
    assert!(!lab.p("state-c").exists());
    // Another appliance (its own state and medium) given the running one's export socket:
    // it took the socket over (the first appliance's commands reached it) and removed it when
    // it stopped. Refused, and the first one still answers.
    std::fs::copy(lab.p("medium.img"), lab.p("other.img")).unwrap();
    let taker = Command::new(mgear_tests::bin("mgear-appliance-sim"))
        .args([
            "--medium",
            &lab.s("other.img"),
            "--state",
            &lab.s("state-t"),
        ])
        .args(["--console-link", &lab.s("t.tty"), "--nbd", &lab.sock()])
        .arg("--test-timing")
        .output()
        .unwrap();
    assert_eq!(taker.status.code(), Some(1));
    assert!(
        text(&taker.stderr).contains("is the export of another running simulator"),
        "{}",
        text(&taker.stderr)
    );
    assert!(!lab.p("state-t").exists() && !lab.p("t.tty").exists());
    assert_eq!(lab.state(), "Sealed");
    // Nor the parents it made, and an existing directory keeps its mode.
    std::fs::create_dir(lab.p("kept")).unwrap();
    std::fs::set_permissions(
        lab.p("kept"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    for state in ["n1/n2/n3", "kept"] {
        let o = Command::new(mgear_tests::bin("mgear-appliance-sim"))
            .args(["--medium", &lab.s("medium.img"), "--state", &lab.s(state)])
            .args(["--console-link", &lab.s("d.tty"), "--nbd", &lab.s("d.sock")])
            .arg("--test-timing")
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    }
    assert!(!lab.p("n1").exists());
    // A medium that is not there: refused at its open, after the claim (the directories
    // stayed).
    let o = Command::new(mgear_tests::bin("mgear-appliance-sim"))
        .args([
            "--medium",
            &lab.s("no-such.img"),
            "--state",
            &lab.s("m1/m2"),
        ])
        .args(["--console-link", &lab.s("m.tty"), "--nbd", &lab.s("m.sock")])
        .arg("--test-timing")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("no-such.img"),
        "{}",
        text(&o.stderr)
    );
    assert!(!lab.p("m1").exists());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(lab.p("kept"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o755
    );

    // Sealed is for good: the export says read-only (it said writable and refused each write).
    let info = Command::new("nbdinfo")
        .args(["--json", &lab.nbd_url()])
        .output()
        .expect("nbdinfo (libnbd-bin)");
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).expect("nbdinfo --json");
    assert_eq!(info["exports"][0]["is_read_only"], true, "{info}");

    lab.appliance_ok(&["arrival"]);
    let out = lab.ingest(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    same_file(&lab.p("disk.raw"), &lab.p("vol.raw"));
}

/// Several short commands on one console at once: the ones that met the moment another held
/// the tty exclusively (while opening it) failed with "Unable to acquire exclusive lock on
/// serial port"; they take turns now.
#[test]
fn commands_started_together_on_one_console_take_turns() {
    use std::os::unix::fs::PermissionsExt;
    let mut lab = Lab::new(40);
    lab.start();
    // A PIN file others can read is said (with the fix), and used.
    std::fs::set_permissions(lab.p("pin"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = lab.appliance_ok(&["provision", "--pin-file", "pin"]);
    assert!(
        text(&out.stderr).contains("can be read by other users (mode 0644): `chmod 600 pin`"),
        "{}",
        text(&out.stderr)
    );
    std::fs::set_permissions(lab.p("pin"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = lab.appliance_ok(&["unlock", "--pin-file", "pin"]);
    assert!(
        !text(&out.stderr).contains("warning"),
        "{}",
        text(&out.stderr)
    );
    let tty = lab.tty();
    let children: Vec<_> = (0..6)
        .map(|_| {
            lab.mgear(&["appliance", "--port", &tty, "info", "--json"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("info --json");
        assert_eq!(v["state"], "Unlocked", "{v}");
    }
}

/// An appliance whose medium holds no FAT32: the capture said "create one with `mgear medium
/// format fat:PATH`", which cannot reach a medium behind an appliance.
#[test]
fn an_appliance_medium_without_fat32_says_where_it_is_formatted() {
    let mut lab = Lab::new(40);
    std::fs::write(lab.p("medium.img"), vec![0x5au8; 8 << 20]).unwrap();
    lab.keygen();
    lab.make_disk(1, 3);
    lab.start();
    lab.provision_and_unlock();
    let out = lab.capture_line().run();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stdout));
    let said = text(&out.stdout);
    assert!(
        said.contains("formatted where the appliance is issued")
            && !said.contains("medium format fat:PATH"),
        "{said}"
    );
}

/// The simulator's medium image written directly (`fat:IMAGE`) while the simulator runs:
/// two writers kept their own FAT and both reported a capture while the medium was
/// damaged. Refused (exit 3), nothing written; reading it beside the simulator still works.
#[test]
fn the_image_a_running_simulator_serves_is_not_written_beside_it() {
    let mut lab = Lab::new(64);
    lab.start();
    lab.provision_and_unlock();
    lab.keygen();
    lab.make_disk(4, 71);
    lab.capture();
    let before = std::fs::read(lab.p("medium.img")).unwrap();
    let m = format!("fat:{}", lab.s("medium.img"));
    let out = Line::capture(&lab, "beside")
        .source("disk.raw")
        .medium(&m)
        .run();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("locked against writers by another program"),
        "{}",
        text(&out.stderr)
    );
    assert!(std::fs::read(lab.p("medium.img")).unwrap() == before);
    // Nor formatted under it (--force overrides "it holds data", not "someone uses it"), nor
    // ingested into through the simulator's export while read as fat:IMAGE.
    let img = lab.s("medium.img");
    let out = lab.run(&["medium", "format", &m, "--force"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("locked against writers by another program"));
    let out = lab.run(&["medium", "format", &m, "--size", "64MiB", "--force"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    for force in [false, true] {
        let mut line = Line::ingest(&lab, "web01")
            .medium(&m)
            .untrusted()
            .arg("--allow-unsealed")
            .target(&lab.nbd_url());
        if force {
            line = line.arg("--force");
        }
        let out = line.run();
        assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
        // Found as the simulator holding the image open for writing (before the export's
        // first sector is compared with the image's).
        assert!(
            text(&out.stderr).contains(&format!("is the medium fat:{img}"))
                || text(&out.stderr).contains(&format!(
                    "{img} of the medium is open for writing by process"
                )),
            "{}",
            text(&out.stderr)
        );
    }
    assert!(std::fs::read(lab.p("medium.img")).unwrap() == before);
    lab.ok(&["verify", "--medium", &m]);
    lab.stop();
}

/// Ctrl-C or SIGTERM while `appliance seal` waits: the appliance goes on inside, which the
/// host cannot stop; the command said nothing (killed by the signal, no JSON) and the
/// appliance sealed anyway. It ends at once, exit 3, with one JSON object saying so. The
/// simulator is held (SIGSTOP) so the wait is certain.
#[test]
fn a_signal_while_the_appliance_seals_ends_the_wait_and_says_so() {
    let mut lab = Lab::new(64);
    lab.keygen();
    lab.make_disk(4, 7);
    lab.start();
    lab.provision_and_unlock();
    lab.capture();
    let sim = lab.sim_pid().to_string();
    assert!(Command::new("kill")
        .args(["-STOP", &sim])
        .status()
        .unwrap()
        .success());
    let tty = lab.tty();
    let child = lab
        .mgear(&["appliance", "--port", &tty, "seal", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1000));
    let started = std::time::Instant::now();
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let o = child.wait_with_output().unwrap();
    let waited = started.elapsed();
    assert!(Command::new("kill")
        .args(["-CONT", &sim])
        .status()
        .unwrap()
        .success());
    assert!(waited < std::time::Duration::from_secs(5), "{waited:?}");
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not one JSON object ({e}): {}", text(&o.stdout)));
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("stopped waiting for the appliance"), "{v}");
    assert!(message.contains("a seal it began goes on"), "{v}");
    lab.stop();
}
