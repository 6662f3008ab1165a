//! `mgear demo`: the whole journey on one machine, in a minute or two.
//!
//! ```text
//! mgear demo [--workdir DIR] [--keep] [--cloud]
//! ```
//!
//! Builds a small bootable Linux disk (MBR, ext4, GRUB, the host's Debian
//! kernel, a busybox init that prints a marker), makes a target key pair,
//! formats a FAT32 medium image and starts the appliance simulator
//! (`mgear-appliance-sim`, next to `mgear`) on it. Then, as at a real site:
//! provision and unlock the appliance, capture the disk through it, let the
//! appliance verify and seal the medium, check it on arrival, verify with
//! the key, ingest into a raw volume (which requires the seal and arrival
//! attestations), compare the volume with the disk bit for bit, and boot the
//! volume under QEMU (TCG, no network) until the marker appears. Every step
//! is timed.
//!
//! `--cloud` takes the journey into a real cloud instead (the cloud lab of
//! `scripts/cloud-lab.sh`, or any OpenStack from the `OS_*` environment):
//! the last steps ingest into a Cinder volume (written straight into its
//! Ceph RBD image), check the volume's SHA-256 as read back against the
//! disk's, and boot a Nova server from the volume until the marker shows on
//! its console. It then removes the server and the volume, unless `--keep`.
//!
//! Tools: qemu-system-x86_64 (qemu-system-x86), mkfs.ext4 (e2fsprogs),
//! grub-mkimage (grub-pc-bin), busybox (busybox-static), a kernel in /boot
//! (linux-image-amd64).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::error::Context;

use crate::exit::{coded, FOUND, IO, OK};
use crate::medium::Where;

/// The appliance simulator, stopped (SIGTERM, then SIGKILL) when dropped.
struct Simulator {
    child: std::process::Child,
    port: PathBuf,
}

impl Simulator {
    fn start(work: &Path, img: &Path) -> crate::Result<Simulator> {
        let exe = std::env::current_exe().context("finding the mgear executable")?;
        let sim = exe.with_file_name("mgear-appliance-sim");
        if !sim.exists() {
            return Err(crate::exit::usage(format!(
                "{} not found: build it with `cargo build --release --workspace --bins` (./demo.sh does)",
                sim.display()
            )));
        }
        let port = work.join("appliance.tty");
        let state = work.join("appliance-state");
        let _ = std::fs::remove_dir_all(&state);
        let child = std::process::Command::new(&sim)
            .arg("--medium")
            .arg(img)
            .arg("--state")
            .arg(&state)
            .arg("--console-link")
            .arg(&port)
            .arg("--nbd")
            .arg(work.join("appliance.sock"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(work.join("appliance.log"))?)
            .spawn()
            .with_context(|| format!("starting {}", sim.display()))?;
        let mut s = Simulator { child, port };
        // The console link appears once the simulator is ready.
        let t = Instant::now();
        while !s.port.exists() {
            if let Some(st) = s.child.try_wait()? {
                return Err(coded(
                    IO,
                    format!(
                        "the appliance simulator exited ({st}); see {}",
                        work.join("appliance.log").display()
                    ),
                ));
            }
            if t.elapsed().as_secs() > 60 {
                return Err(coded(IO, "the appliance simulator did not come up in 60 s"));
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Ok(s)
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run one `mgear appliance` command against the simulator.
fn appliance(port: &Path, cmd: crate::appliance::Cmd) -> crate::Result<()> {
    let code = crate::appliance::run(crate::appliance::Plan {
        port: Some(port.to_owned()),
        json: false,
        cmd,
    })?;
    if code != OK {
        return Err(coded(code, "the appliance refused"));
    }
    Ok(())
}

/// `mgear demo`, typed (the binary's `cli::demo` fills it in from the flags).
#[derive(Debug)]
pub struct Plan {
    /// Work directory [default: a new temporary directory].
    pub workdir: Option<PathBuf>,
    /// Keep the work directory (a temporary one is removed otherwise).
    pub keep: bool,
    /// Seconds to wait for the boot marker.
    pub boot_timeout: u64,
    /// Ingest into OpenStack Cinder (on Ceph) and boot through Nova, with the
    /// cloud's settings from the environment (`eval "$(scripts/cloud-lab.sh
    /// start)"` prints them for the local lab), instead of a raw volume and QEMU.
    pub cloud: bool,
}

/// The flavor `demo --cloud` boots with (created if the cloud lacks it).
const CLOUD_FLAVOR: &str = "mgear.demo";

/// Debian packages the demo needs, by the program it runs.
const TOOLS: &[(&str, &str)] = &[
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("mkfs.ext4", "e2fsprogs"),
    ("grub-mkimage", "grub-pc-bin"),
];

/// Steps done so far and their seconds, for `demo --json`.
static STEPS: std::sync::Mutex<Vec<(u32, String, f64)>> = std::sync::Mutex::new(Vec::new());

fn step<T>(n: u32, what: &str, f: impl FnOnce() -> crate::Result<T>) -> crate::Result<T> {
    println!("[{n}] {what} ...");
    let t = Instant::now();
    let r = f().with_context(|| format!("demo step {n} ({what})"))?;
    let secs = t.elapsed().as_secs_f64();
    println!("[{n}] {what}: done in {secs:.1} s");
    if let Ok(mut s) = STEPS.lock() {
        s.push((n, what.to_string(), secs));
    }
    Ok(r)
}

/// While alive, stdout goes to stderr: with `--json` the demo's step lines
/// and the commands it runs must not mix with the one JSON object stdout
/// carries. Restores stdout when dropped (also on error).
struct StdoutToStderr(Option<std::os::fd::OwnedFd>);

impl StdoutToStderr {
    fn new(active: bool) -> crate::Result<Self> {
        use std::io::Write;
        use std::os::fd::AsFd;
        if !active {
            return Ok(StdoutToStderr(None));
        }
        std::io::stdout().flush().context("writing to stdout")?;
        let saved = std::io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .context("duplicating stdout")?;
        // SAFETY: dup2 on the process's own standard descriptors, both open;
        // it only redirects descriptor 1.
        if unsafe { nix::libc::dup2(2, 1) } < 0 {
            return Err(std::io::Error::last_os_error()).context("redirecting stdout");
        }
        Ok(StdoutToStderr(Some(saved)))
    }
}

impl Drop for StdoutToStderr {
    fn drop(&mut self) {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        if let Some(saved) = self.0.take() {
            let _ = std::io::stdout().flush();
            // SAFETY: `saved` is an open descriptor we own; dup2 restores fd 1.
            unsafe { nix::libc::dup2(saved.as_raw_fd(), 1) };
        }
    }
}

/// Run `mgear demo`.
pub fn run(args: Plan) -> crate::Result<i32> {
    let missing: Vec<&str> = TOOLS
        .iter()
        .filter(|(t, _)| crate::tools::which(t).is_none())
        .map(|(_, p)| *p)
        .collect();
    if !missing.is_empty() {
        return Err(crate::exit::usage(format!(
            "the demo needs more tools: apt-get install {} busybox-static linux-image-amd64",
            missing.join(" ")
        )));
    }
    if args.cloud {
        // Before minutes of work: the cloud must be reachable as configured.
        crate::cloud_target::session().map_err(|e| {
            crate::exit::usage(format!(
                "demo --cloud needs an OpenStack cloud with Cinder on Ceph and Nova: {e:#}; for \
                 the local lab run `eval \"$(scripts/cloud-lab.sh start)\"` (as root) first, \
                 or export the OS_* settings of your cloud"
            ))
        })?;
    }
    let mut temp = None;
    let work: PathBuf = match &args.workdir {
        Some(d) => {
            claim_workdir(d, "demo")?;
            d.clone()
        }
        None => {
            let t = tempfile::Builder::new().prefix("mgear-demo-").tempdir()?;
            let p = t.path().to_owned();
            temp = Some(t);
            p
        }
    };
    let json = crate::output::json();
    let redirect = StdoutToStderr::new(json)?;
    // The steps print their lines (to stderr, above), not JSON objects of their own.
    crate::output::set_json(false);
    println!("work directory: {}", work.display());
    let total = Instant::now();
    let result = demo(&work, &args);
    // A temporary work dir is removed unless --keep, or the demo failed
    // (then its files are what one needs to look at).
    if let Some(t) = temp {
        if args.keep || result.is_err() {
            println!("kept {}", t.keep().display());
        }
    }
    let seconds = total.elapsed().as_secs_f64();
    drop(redirect);
    crate::output::set_json(json);
    let code = result?;
    if json {
        let steps: Vec<serde_json::Value> = STEPS
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|(n, what, secs)| serde_json::json!({"step": n, "what": what, "seconds": secs}))
            .collect();
        crate::output::emit_ok(
            code == OK,
            &serde_json::json!({"workdir": work, "seconds": seconds, "steps": steps}),
        )?;
    } else {
        println!("demo finished in {seconds:.1} s");
    }
    Ok(code)
}

/// Make `dir` the `--workdir` of `mgear COMMAND` (demo, bench): create it,
/// or take it when it is empty or an earlier run's (it holds the marker
/// `.mgear-COMMAND`). Refuse (exit 2) a directory that holds anything else:
/// the run writes and removes files by fixed names there (`target.key`,
/// `medium.img`, `vol.raw`, `keys/`), which must never be the user's.
pub fn claim_workdir(dir: &Path, command: &str) -> crate::Result<()> {
    let marker = dir.join(format!(".mgear-{command}"));
    if dir.exists() && !dir.is_dir() {
        return Err(crate::exit::usage(format!(
            "--workdir {} is not a directory: give a new or empty directory",
            dir.display()
        )));
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if !marker.exists() {
        let first = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .next();
        if let Some(entry) = first {
            let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
            return Err(crate::exit::usage(format!(
                "--workdir {} already holds files (e.g. {}): mgear {command} writes and removes \
                 files by fixed names in its work directory (target.key, medium.img, vol.raw, \
                 keys/, ...). Give a new or empty directory",
                dir.display(),
                entry.file_name().to_string_lossy()
            )));
        }
        std::fs::write(&marker, format!("work directory of mgear {command}\n"))
            .with_context(|| format!("writing {}", marker.display()))?;
    }
    Ok(())
}

fn demo(work: &Path, args: &Plan) -> crate::Result<i32> {
    let disk = work.join("disk.raw");
    let key = work.join("target.key");
    let img = work.join("medium.img");
    let vol = work.join("vol.raw");
    for p in [&key, &crate::keyfile::pub_path(&key), &img, &vol] {
        let _ = std::fs::remove_file(p);
    }
    let sample = step(1, "build a small bootable Linux disk", || {
        Ok(mgear_boot::build_sample_disk(
            &disk,
            &mgear_boot::SampleDiskOptions::default(),
        )?)
    })?;
    println!(
        "    {} ({}), marker {:?}",
        disk.display(),
        crate::units::human_bytes(sample.size),
        sample.marker_line
    );
    let site_key = work.join("site.key");
    step(
        2,
        "make the target key pair, and the capture site's signing key",
        || {
            // The demo's own work directory, run again: its keys of the last run are made
            // anew, not replaced (a warning about pinned keys, and one more
            // `site.key.replaced.N` each run, for keys nothing outside the demo uses).
            for k in [&key, &site_key] {
                for p in [k.clone(), crate::keyfile::pub_path(k)] {
                    if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_file()) {
                        std::fs::remove_file(&p)
                            .with_context(|| format!("removing {}", p.display()))?;
                    }
                }
            }
            crate::keys::keygen(crate::keys::Keygen {
                out: key.clone(),
                force: true,
                signing: false,
            })?;
            crate::keys::keygen(crate::keys::Keygen {
                out: site_key.clone(),
                force: true,
                signing: true,
            })
        },
    )?;
    step(3, "format a FAT32 medium image", || {
        crate::medium::format_fat(&img, Some(256 << 20), true)
    })?;
    let sim = step(4, "start the appliance simulator on the medium", || {
        Simulator::start(work, &img)
    })?;
    let port = sim.port.clone();
    println!("    console {}", port.display());
    let pin = work.join("pin");
    std::fs::write(&pin, "demo-pin-4711\n")?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pin, std::fs::Permissions::from_mode(0o600))?;
    }
    step(
        5,
        "provision the appliance (PIN, Ed25519 identity) and unlock it",
        || {
            appliance(
                &port,
                crate::appliance::Cmd::Provision {
                    pin_file: Some(pin.clone()),
                },
            )?;
            appliance(
                &port,
                crate::appliance::Cmd::Unlock {
                    pin_file: Some(pin.clone()),
                },
            )
        },
    )?;
    let medium = Where::appliance_at(port.clone());
    // What the target pins when it ships the appliance out: its full fingerprint.
    let appliance_fp = crate::sitekey::fingerprint(&crate::appliance::appliance_identity(&port)?);
    println!("    appliance fingerprint {appliance_fp}");
    step(
        6,
        "capture the disk through the appliance, signed with site.key",
        || {
            let r = crate::capture::capture(&crate::capture::Plan {
                dirty_bitmap: None,
                source: Some(disk.display().to_string()),
                medium: medium.clone(),
                name: "demo".into(),
                recipient: crate::keys::read_recipients(
                    &crate::keyfile::pub_path(&key).display().to_string(),
                )?,
                passphrase_file: None,
                passphrase_generate: false,
                delta: false,
                rate_limit: None,
                key_cache: Some(work.join("keys")),
                chunk_size: crate::capture::DEFAULT_CHUNK_SIZE,
                chunk_size_given: true,
                no_compress: false,
                threads: None,
                json: false,
                report: None,
                checkpoint_bytes: 64 << 20,
                passphrase_work_factor: None,
                dry_run: false,
                abort: false,
                skip_space_check: false,
                same_source: false,
                source_was: None,
                replace_medium: Vec::new(),
                no_dedup_across_disks: false,
                dedup_across_machines: None,
                span_total: None,
                check_profile: None,
                sign: Some(site_key.clone()),
            })?;
            println!(
                "    read {}, stored {} ({} zero, {} dedup, {} stored chunks), {:.1} MB/s",
                crate::units::human_bytes(r.bytes_read),
                crate::units::human_bytes(r.stored_bytes),
                r.zero_chunks,
                r.dedup_chunks,
                r.stored_chunks,
                r.mb_per_s
            );
            println!(
                "    receipt: generation {}, commit {}",
                r.receipt.generation,
                r.receipt.commit_digest.as_deref().unwrap_or("-")
            );
            Ok(())
        },
    )?;
    step(
        7,
        "seal: the appliance verifies every record (no key), write-protects and signs",
        || appliance(&port, crate::appliance::Cmd::Seal),
    )?;
    step(
        8,
        "arrival: the appliance verifies again and signs the arrival check",
        || appliance(&port, crate::appliance::Cmd::Arrival),
    )?;
    step(
        9,
        "verify the medium with the key (decrypt everything)",
        || {
            let code = crate::verify::run(crate::verify::Plan {
                medium: medium.clone(),
                identity: Some(key.clone()),
                passphrase_file: None,
                name: None,
                generation: None,
                json: false,
                trust: crate::trust::Pins {
                    trust: vec![crate::keyfile::pub_path(&site_key)],
                    trust_appliance: vec![appliance_fp.clone()],
                    expect_generation: Some(1),
                    expect_commit: None,
                    ..Default::default()
                },
            })?;
            if code != OK {
                return Err(coded(FOUND, "verification found problems"));
            }
            Ok(())
        },
    )?;
    if args.cloud {
        let trust = crate::trust::Pins {
            trust: vec![crate::keyfile::pub_path(&site_key)],
            trust_appliance: vec![appliance_fp.clone()],
            expect_generation: Some(1),
            expect_commit: None,
            ..Default::default()
        };
        return demo_cloud(work, args, &medium, &key, trust, &disk, &sample, sim);
    }
    step(
        10,
        "ingest into a raw volume (pinned site key and appliance; seal and arrival)",
        || {
            crate::ingest::ingest(&crate::ingest::Plan {
                boot: false,
                wait_for: String::new(),
                timeout: 0,
                boot_bus: mgear_boot::Bus::Auto,
                flavor: None,
                adapt: false,
                medium: medium.clone(),
                name: "demo".into(),
                identity: Some(key.clone()),
                passphrase_file: None,
                target: format!("file:{}", vol.display()),
                register_image: false,
                generation: None,
                state_dir: Some(work.join("ingest-state")),
                force: true,
                allow_unsealed: false,
                trust: crate::trust::Pins {
                    trust: vec![crate::keyfile::pub_path(&site_key)],
                    trust_appliance: vec![appliance_fp.clone()],
                    expect_generation: Some(1),
                    expect_commit: None,
                    ..Default::default()
                },
                rate_limit: None,
                checkpoint_bytes: 64 << 20,
                json: false,
                report: None,
                hold: crate::ingest::Finishing::Now,
                expect_root: None,
                volume_sha256: false,
            })?;
            Ok(())
        },
    )?;
    drop(sim);
    step(11, "compare the volume with the disk bit for bit", || {
        compare(&disk, &vol)
    })?;
    let report = step(
        12,
        "boot the volume under QEMU (TCG, no network) and wait for the marker",
        || {
            let mut spec = mgear_boot::BootSpec::new(
                mgear_boot::Target::File(vol.clone()),
                sample.marker_line.clone(),
            );
            spec.timeout = std::time::Duration::from_secs(args.boot_timeout);
            spec.snapshot = true;
            Ok(mgear_boot::boot(&spec)?)
        },
    )?;
    if !report.booted() {
        // The data checked out (step 11 compared it): the generic hint, "the data did not
        // check out: do not use it", blamed it.
        return Err(crate::exit::coded_hint(
            FOUND,
            format!(
                "the volume did not boot: {}\nlast console lines:\n{}",
                report.detail,
                report.console_tail(20)
            ),
            "the ingested volume matched the sample disk; the guest did not show its marker in \
             time: read the console lines above, and on a slow or busy machine give a longer \
             --boot-timeout",
        ));
    }
    println!(
        "    marker {:?} after {:.1} s",
        report.matched.as_deref().unwrap_or(""),
        report.time_to_marker_secs.unwrap_or(0.0)
    );
    Ok(OK)
}

/// Steps 10-12 of `demo --cloud`: into Cinder, checked, booted through Nova.
#[allow(clippy::too_many_arguments)]
fn demo_cloud(
    work: &Path,
    args: &Plan,
    medium: &Where,
    key: &Path,
    trust: crate::trust::Pins,
    disk: &Path,
    sample: &mgear_boot::SampleDisk,
    sim: Simulator,
) -> crate::Result<i32> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let name = format!("mgear-demo-{stamp}");
    let ingest_args = crate::ingest::Plan {
        boot: true,
        wait_for: sample.marker_line.clone(),
        timeout: args.boot_timeout,
        boot_bus: mgear_boot::Bus::Auto,
        flavor: Some(CLOUD_FLAVOR.into()),
        adapt: false,
        medium: medium.clone(),
        name: "demo".into(),
        identity: Some(key.to_path_buf()),
        passphrase_file: None,
        target: format!("cinder:{name}"),
        register_image: false,
        generation: None,
        state_dir: Some(work.join("ingest-state")),
        force: false,
        allow_unsealed: false,
        trust,
        rate_limit: None,
        checkpoint_bytes: 64 << 20,
        json: false,
        report: None,
        hold: crate::ingest::Finishing::Now,
        expect_root: None,
        volume_sha256: true,
    };
    let mut report = step(
        10,
        "ingest into a new Cinder volume, straight into its Ceph RBD image (pinned site key and appliance; seal and arrival)",
        || crate::ingest::ingest(&ingest_args),
    )?;
    drop(sim);
    let volume = report.volume.clone().unwrap_or_default();
    println!("    volume {volume} ({name})");
    step(
        11,
        "check the volume's SHA-256, read back through librbd, against the disk",
        || {
            let want = file_sha256(disk)?;
            match report.volume_sha256.as_deref() {
                Some(got) if got == want => {
                    println!("    sha256 {got}");
                    Ok(())
                }
                got => Err(coded(
                    FOUND,
                    format!(
                        "the volume reads back as sha256 {}, the disk is {want}",
                        got.unwrap_or("(not read back)")
                    ),
                )),
            }
        },
    )?;
    let code = step(
        12,
        "boot a Nova server from the volume and wait for the marker on its console",
        || {
            let session = crate::cloud_target::session()?;
            mgear_cloud::Nova::new(&session)
                .ensure_flavor(CLOUD_FLAVOR, 512, 1, 0)
                .map_err(crate::cloud_target::cloud_err)?;
            crate::ingest::boot_cinder(&ingest_args, &mut report)
        },
    )?;
    if let Some(server) = &report.server {
        println!("    server {server}");
    }
    if args.keep {
        println!("    kept: server and volume {volume} (--keep)");
    } else {
        step(
            13,
            "remove the server and the volume (--keep keeps them)",
            || {
                let session = crate::cloud_target::session()?;
                let wait = std::time::Duration::from_secs(300);
                if let Some(server) = &report.server {
                    let nova = mgear_cloud::Nova::new(&session);
                    nova.delete_server(server)
                        .and_then(|()| nova.wait_server_gone(server, wait))
                        .map_err(crate::cloud_target::cloud_err)?;
                }
                let cinder = mgear_cloud::Cinder::new(&session);
                cinder
                    .wait_status(&volume, "available", wait)
                    .and_then(|_| cinder.delete(&volume))
                    .map_err(crate::cloud_target::cloud_err)
            },
        )?;
    }
    if code != OK {
        return Err(coded(FOUND, "the server did not boot from the volume"));
    }
    Ok(OK)
}

/// SHA-256 (hex) of a file, as `sha256sum` prints it.
fn file_sha256(p: &Path) -> crate::Result<String> {
    use sha2::Digest as _;
    let mut f = std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
    let mut sha = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
    }
    Ok(crate::output::hex(&sha.finalize()))
}

/// Compare two files; an error names the first differing byte.
pub fn compare(a: &Path, b: &Path) -> crate::Result<()> {
    let open =
        |p: &Path| std::fs::File::open(p).with_context(|| format!("opening {}", p.display()));
    let (mut fa, mut fb) = (open(a)?, open(b)?);
    let (la, lb) = (fa.metadata()?.len(), fb.metadata()?.len());
    if la != lb {
        return Err(coded(
            FOUND,
            format!("{} is {la} bytes, {} is {lb}", a.display(), b.display()),
        ));
    }
    let mut ba = vec![0u8; 1 << 20];
    let mut bb = vec![0u8; 1 << 20];
    let mut off = 0u64;
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(());
        }
        fb.read_exact(&mut bb[..n])
            .map_err(|e| coded(IO, format!("reading {}: {e}", b.display())))?;
        if let Some(i) = ba[..n].iter().zip(&bb[..n]).position(|(x, y)| x != y) {
            return Err(coded(
                FOUND,
                format!(
                    "{} and {} differ at byte {}",
                    a.display(),
                    b.display(),
                    off + i as u64
                ),
            ));
        }
        off += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workdir_is_taken_only_when_new_empty_or_an_earlier_runs() {
        let d = tempfile::tempdir().unwrap();
        // The user's files: refused, untouched.
        let mine = d.path().join("mine");
        std::fs::create_dir(&mine).unwrap();
        std::fs::write(mine.join("target.key"), b"the only key").unwrap();
        let e = claim_workdir(&mine, "bench").unwrap_err();
        assert_eq!(crate::exit::code_of(&e), crate::exit::USAGE);
        assert!(
            e.to_string()
                .contains("already holds files (e.g. target.key)"),
            "{e}"
        );
        assert_eq!(
            std::fs::read(mine.join("target.key")).unwrap(),
            b"the only key"
        );
        assert!(!mine.join(".mgear-bench").exists());
        // New, then again (the earlier run's files are its own).
        let new = d.path().join("new/work");
        claim_workdir(&new, "demo").unwrap();
        std::fs::write(new.join("medium.img"), b"x").unwrap();
        claim_workdir(&new, "demo").unwrap();
        // Another command's work directory is not this one's.
        assert!(claim_workdir(&new, "bench").is_err());
        // A file is not a directory.
        let e = claim_workdir(&mine.join("target.key"), "demo").unwrap_err();
        assert!(e.to_string().contains("is not a directory"), "{e}");
    }
}
