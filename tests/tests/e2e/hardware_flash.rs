//! `flash.sh` (board flashing and `--sim`) and the firmware core's no-std
//! check, driven the way a developer runs them.
//!
//! No probe or board exists here, so probe-rs is replaced by a fake script
//! (`MGEAR_PROBE_RS`) that records its arguments; the image is any file
//! (`MGEAR_FIRMWARE_IMAGE`), since flash.sh treats it as opaque bytes.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the repository root")
        .to_path_buf()
}

/// A sandbox with a fake probe-rs, an image and a stamp directory.
struct Bench {
    dir: tempfile::TempDir,
}

impl Bench {
    fn new() -> Bench {
        let dir = tempfile::tempdir().expect("temp dir");
        let probe = dir.path().join("fake-probe-rs");
        // Records every invocation; fails on demand via FAKE_PROBE_EXIT.
        fs::write(
            &probe,
            "#!/bin/sh\necho \"$*\" >> \"$FAKE_PROBE_LOG\"\nexit \"${FAKE_PROBE_EXIT:-0}\"\n",
        )
        .expect("write fake probe");
        fs::set_permissions(&probe, fs::Permissions::from_mode(0o755)).expect("chmod fake probe");
        fs::write(
            dir.path().join("firmware.elf"),
            b"\x7fELF firmware image v1",
        )
        .expect("image");
        Bench { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn image(&self) -> PathBuf {
        self.path("firmware.elf")
    }

    fn stamp_dir(&self) -> PathBuf {
        self.path("stamps")
    }

    /// Lines the fake probe recorded, one per invocation.
    fn probe_calls(&self) -> Vec<String> {
        match fs::read_to_string(self.path("probe.log")) {
            Ok(s) => s.lines().map(str::to_owned).collect(),
            Err(_) => Vec::new(),
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(repo().join("flash.sh"));
        c.args(args)
            .current_dir(self.dir.path())
            .env("MGEAR_PROBE_RS", self.path("fake-probe-rs"))
            .env("FAKE_PROBE_LOG", self.path("probe.log"))
            .env("MGEAR_FIRMWARE_IMAGE", self.image())
            .env("MGEAR_STAMP_DIR", self.stamp_dir())
            .env_remove("MGEAR_CHIP")
            .env_remove("MGEAR_SIM_DIR");
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run flash.sh")
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn flash_sh_is_shellcheck_clean() {
    let out = Command::new("shellcheck")
        .arg("flash.sh")
        .current_dir(repo())
        .output()
        .expect("shellcheck is installed (Debian package shellcheck)");
    assert!(
        out.status.success(),
        "shellcheck flash.sh:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[test]
fn help_documents_every_option_and_prerequisite() {
    let out = Bench::new().run(&["--help"]);
    assert!(out.status.success());
    let help = text(&out.stdout);
    for needle in [
        "--board",
        "--chip",
        "--probe",
        "--image",
        "--force",
        "--dfu",
        "--dry-run",
        "--sim",
        "--sim-dir",
        "--medium-mib",
        "cargo run -p mgear-appliance-sim",
        "rustup target add thumbv8m.main-none-eabihf",
        "cargo install probe-rs-tools --locked",
        "MGEAR_PROBE_RS",
        "MGEAR_DFU_UTIL",
        "apt-get install dfu-util",
        "MGEAR_FIRMWARE_IMAGE",
        "MGEAR_STAMP_DIR",
        "Exit status",
    ] {
        assert!(
            help.contains(needle),
            "--help does not mention {needle:?}:\n{help}"
        );
    }
}

#[test]
fn unknown_argument_is_a_usage_error() {
    let b = Bench::new();
    let out = b.run(&["--frobnicate"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("unknown argument '--frobnicate'"));
    assert!(b.probe_calls().is_empty());
}

#[test]
fn dry_run_prints_the_plan_and_touches_nothing() {
    let b = Bench::new();
    let out = b.run(&["--dry-run", "--probe", "0483:374e:ABC"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    let image = b.image().display().to_string();
    assert!(
        stdout.contains("build: skipped (--image given)"),
        "{stdout}"
    );
    assert!(stdout.contains(&format!("image: {image}")), "{stdout}");
    assert!(
        stdout.contains("download --verify --chip STM32U5A5ZJTx --probe 0483:374e:ABC"),
        "{stdout}"
    );
    assert!(stdout.contains("reset --chip STM32U5A5ZJTx"), "{stdout}");
    assert!(stdout.contains("would flash: image sha256 "), "{stdout}");
    assert!(b.probe_calls().is_empty(), "dry run ran the probe tool");
    assert!(!b.stamp_dir().exists(), "dry run wrote a stamp");
}

#[test]
fn identical_image_is_refused_without_force() {
    let b = Bench::new();
    let image = b.image().display().to_string();

    let first = b.run(&[]);
    assert_eq!(first.status.code(), Some(0), "{}", text(&first.stderr));
    let calls = b.probe_calls();
    assert_eq!(
        calls,
        vec![
            format!("download --verify --chip STM32U5A5ZJTx {image}"),
            "reset --chip STM32U5A5ZJTx".to_owned(),
        ]
    );
    assert!(b.stamp_dir().join("STM32U5A5ZJTx.sha256").exists());

    // Same bytes again: refused, probe not touched.
    let again = b.run(&[]);
    assert_eq!(again.status.code(), Some(3));
    let err = text(&again.stderr);
    assert!(
        err.contains("identical") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(b.probe_calls().len(), 2);

    // The dry run says so too.
    let dry = b.run(&["--dry-run"]);
    assert_eq!(dry.status.code(), Some(0));
    assert!(
        text(&dry.stdout).contains("would skip"),
        "{}",
        text(&dry.stdout)
    );

    // --force flashes anyway.
    let forced = b.run(&["--force"]);
    assert_eq!(forced.status.code(), Some(0), "{}", text(&forced.stderr));
    assert_eq!(b.probe_calls().len(), 4);

    // A different image is flashed without --force.
    fs::write(b.image(), b"\x7fELF firmware image v2").unwrap();
    let changed = b.run(&[]);
    assert_eq!(changed.status.code(), Some(0), "{}", text(&changed.stderr));
    assert_eq!(b.probe_calls().len(), 6);

    // The stamp is per chip: another chip name is a different target.
    let other = b.run(&["--chip", "STM32U5A5ZJTxQ"]);
    assert_eq!(other.status.code(), Some(0), "{}", text(&other.stderr));
    assert_eq!(b.probe_calls().len(), 8);
}

/// `--dfu`: ELF converted to a raw image, flashed with dfu-util through the
/// STM32 system bootloader; its own stamp, the same identical-image rule.
#[test]
fn dfu_converts_flashes_and_refuses_identical_images() {
    let b = Bench::new();
    let objcopy = b.path("fake-objcopy");
    // Records its arguments and "converts" by copying ($3 -> $4).
    fs::write(
        &objcopy,
        "#!/bin/sh\necho \"objcopy $*\" >> \"$FAKE_PROBE_LOG\"\ncp \"$3\" \"$4\"\n",
    )
    .unwrap();
    fs::set_permissions(&objcopy, fs::Permissions::from_mode(0o755)).unwrap();
    let dfu = |args: &[&str]| {
        b.cmd(args)
            .env("MGEAR_OBJCOPY", &objcopy)
            .env("MGEAR_DFU_UTIL", b.path("fake-probe-rs"))
            .output()
            .unwrap()
    };
    let raw = b.stamp_dir().join("firmware.elf.bin").display().to_string();

    let first = dfu(&["--dfu"]);
    assert_eq!(first.status.code(), Some(0), "{}", text(&first.stderr));
    assert_eq!(
        b.probe_calls(),
        vec![
            format!("objcopy -O binary {} {raw}", b.image().display()),
            format!("-d 0483:df11 -a 0 -s 0x08000000:leave -D {raw}"),
        ]
    );
    assert_eq!(fs::read(&raw).unwrap(), fs::read(b.image()).unwrap());
    assert!(b.stamp_dir().join("dfu-STM32U5A5ZJTx.sha256").exists());

    let again = dfu(&["--dfu"]);
    assert_eq!(again.status.code(), Some(3), "{}", text(&again.stderr));
    assert_eq!(b.probe_calls().len(), 2);

    let missing = b
        .cmd(&["--dfu"])
        .env("MGEAR_OBJCOPY", &objcopy)
        .env("MGEAR_DFU_UTIL", b.path("no-such-dfu-util"))
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(text(&missing.stderr).contains("apt-get install dfu-util"));
}

#[test]
fn failed_flash_leaves_no_stamp() {
    let b = Bench::new();
    let out = b.cmd(&[]).env("FAKE_PROBE_EXIT", "1").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("could not flash"),
        "{}",
        text(&out.stderr)
    );
    assert!(!b.stamp_dir().join("STM32U5A5ZJTx.sha256").exists());
    // So the next attempt flashes instead of refusing.
    let retry = b.run(&[]);
    assert_eq!(retry.status.code(), Some(0), "{}", text(&retry.stderr));
}

#[test]
fn missing_probe_tool_says_what_to_install() {
    let b = Bench::new();
    let out = b
        .cmd(&[])
        .env("MGEAR_PROBE_RS", b.path("no-such-probe-rs"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("cargo install probe-rs-tools --locked"),
        "{err}"
    );
}

#[test]
fn missing_rust_target_says_what_to_install() {
    let b = Bench::new();
    // A rustc whose sysroot has no thumbv8m target, whatever this machine has.
    let sysroot = b.path("sysroot");
    fs::create_dir_all(sysroot.join("lib/rustlib/x86_64-unknown-linux-gnu")).unwrap();
    let rustc = b.path("fake-rustc");
    fs::write(&rustc, format!("#!/bin/sh\necho '{}'\n", sysroot.display())).unwrap();
    fs::set_permissions(&rustc, fs::Permissions::from_mode(0o755)).unwrap();

    let out = b
        .cmd(&[])
        .env_remove("MGEAR_FIRMWARE_IMAGE")
        .env("MGEAR_RUSTC", &rustc)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("rustup target add thumbv8m.main-none-eabihf"),
        "{err}"
    );
    assert!(b.probe_calls().is_empty());

    // With the target present the plan builds the board binary for it.
    fs::create_dir_all(sysroot.join("lib/rustlib/thumbv8m.main-none-eabihf")).unwrap();
    let dry = b
        .cmd(&["--dry-run"])
        .env_remove("MGEAR_FIRMWARE_IMAGE")
        .env("MGEAR_RUSTC", &rustc)
        .output()
        .unwrap();
    let plan = text(&dry.stdout);
    assert_eq!(dry.status.code(), Some(0), "{plan}");
    assert!(
        plan.contains(
            "build: cargo build --release -p mgear-hardware --bin mgear-board \
             --features board-u5a5 --target thumbv8m.main-none-eabihf"
        ),
        "{plan}"
    );
}

#[test]
fn sim_dry_run_prints_the_simulator_command() {
    let b = Bench::new();
    let out = b.run(&[
        "--sim",
        "--dry-run",
        "--sim-dir",
        "/tmp/mg sim",
        "--",
        "--verbose",
    ]);
    let plan = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{plan}");
    let manifest = repo().join("Cargo.toml").display().to_string();
    assert!(
        plan.contains(&format!(
            "cargo run --manifest-path {manifest} -p mgear-appliance-sim -- \
             --medium /tmp/mg\\ sim/medium.img --state /tmp/mg\\ sim/state \
             --console-link /tmp/mg\\ sim/appliance.tty --nbd /tmp/mg\\ sim/appliance.sock \
             --verbose"
        )),
        "{plan}"
    );
    assert!(
        plan.contains("medium: mkfs.fat -F 32 -n MGEAR -C /tmp/mg\\ sim/medium.img 1048576"),
        "{plan}"
    );
    assert!(
        !Path::new("/tmp/mg sim").exists(),
        "dry run created the sim dir"
    );
}

/// `--sim` for real: creates a FAT32 medium once, then runs the simulator
/// (a fake cargo here, recording its arguments) with the four paths.
#[test]
fn sim_creates_a_fat32_medium_once_and_starts_the_simulator() {
    let b = Bench::new();
    let cargo = b.path("fake-cargo");
    fs::write(&cargo, "#!/bin/sh\necho \"$*\" >> \"$FAKE_CARGO_LOG\"\n").unwrap();
    fs::set_permissions(&cargo, fs::Permissions::from_mode(0o755)).unwrap();
    let sim_dir = b.path("sim");
    let run = || {
        b.cmd(&[
            "--sim",
            "--medium-mib",
            "64",
            "--sim-dir",
            sim_dir.to_str().unwrap(),
        ])
        .env("MGEAR_CARGO", &cargo)
        .env("FAKE_CARGO_LOG", b.path("cargo.log"))
        .output()
        .unwrap()
    };

    let out = run();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let medium = sim_dir.join("medium.img");
    let image = fs::read(&medium).expect("medium created");
    assert_eq!(image.len(), 64 << 20);
    assert_eq!(&image[82..90], b"FAT32   ", "not a FAT32 boot sector");
    let log = fs::read_to_string(b.path("cargo.log")).unwrap();
    let d = sim_dir.display();
    assert!(
        log.contains(&format!(
            "-p mgear-appliance-sim -- --medium {d}/medium.img --state {d}/state \
             --console-link {d}/appliance.tty --nbd {d}/appliance.sock"
        )),
        "{log}"
    );

    // An existing medium is kept as it is, never reformatted.
    let mut changed = image;
    changed[1 << 20] = 0xA5;
    fs::write(&medium, &changed).unwrap();
    let again = run();
    assert_eq!(again.status.code(), Some(0), "{}", text(&again.stderr));
    assert_eq!(fs::read(&medium).unwrap()[1 << 20], 0xA5);
    assert_eq!(
        fs::read_to_string(b.path("cargo.log"))
            .unwrap()
            .lines()
            .count(),
        2
    );

    let bad = b.run(&["--sim", "--medium-mib", "lots"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(text(&bad.stderr).contains("whole number of MiB"));
}

#[test]
fn simulator_arguments_need_sim() {
    let out = Bench::new().run(&["--", "--verbose"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("add --sim"));
}
