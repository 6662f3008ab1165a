//! `mgear demo`: the whole journey on one machine, in a minute or two.
//!
//! ```text
//! mgear demo [--workdir DIR] [--keep]
//! ```
//!
//! Builds a small bootable Linux disk (MBR, ext4, GRUB, the host's Debian
//! kernel, a busybox init that prints a marker), makes a target key pair,
//! formats a FAT32 medium image, captures the disk onto it, verifies it
//! without and with the key, ingests it into a raw volume, compares the
//! volume with the disk bit for bit, and boots the volume under QEMU (TCG,
//! no network) until the marker appears. Every step is timed. There is no
//! appliance in the demo, so ingest runs with `--allow-unsealed`.
//!
//! Tools: qemu-system-x86_64 (qemu-system-x86), mkfs.ext4 (e2fsprogs),
//! grub-mkimage (grub-pc-bin), busybox (busybox-static), a kernel in /boot
//! (linux-image-amd64).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;

use crate::exit::{coded, FOUND, IO, OK};
use crate::medium::Where;

/// Arguments of `mgear demo`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Work directory [default: a new temporary directory].
    #[arg(long)]
    pub workdir: Option<PathBuf>,
    /// Keep the work directory (a temporary one is removed otherwise).
    #[arg(long)]
    pub keep: bool,
    /// Seconds to wait for the boot marker.
    #[arg(long, default_value_t = 300)]
    pub boot_timeout: u64,
}

/// Debian packages the demo needs, by the program it runs.
const TOOLS: &[(&str, &str)] = &[
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("mkfs.ext4", "e2fsprogs"),
    ("grub-mkimage", "grub-pc-bin"),
];

fn step<T>(n: u32, what: &str, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    println!("[{n}] {what} ...");
    let t = Instant::now();
    let r = f().with_context(|| format!("demo step {n} ({what})"))?;
    println!("[{n}] {what}: done in {:.1} s", t.elapsed().as_secs_f64());
    Ok(r)
}

/// Run `mgear demo`.
pub fn run(args: Args) -> anyhow::Result<i32> {
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
    let mut temp = None;
    let work: PathBuf = match &args.workdir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            d.clone()
        }
        None => {
            let t = tempfile::Builder::new().prefix("mgear-demo-").tempdir()?;
            let p = t.path().to_owned();
            temp = Some(t);
            p
        }
    };
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
    let code = result?;
    println!("demo finished in {:.1} s", total.elapsed().as_secs_f64());
    Ok(code)
}

fn demo(work: &Path, args: &Args) -> anyhow::Result<i32> {
    let disk = work.join("disk.raw");
    let key = work.join("target.key");
    let img = work.join("medium.img");
    let vol = work.join("vol.raw");
    for p in [&key, &crate::keys::pub_path(&key), &img, &vol] {
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
    step(2, "make the target key pair", || {
        crate::keys::keygen(crate::keys::KeygenArgs {
            out: key.clone(),
            force: true,
        })
    })?;
    step(3, "format a FAT32 medium image", || {
        crate::medium::format_fat(&img, Some(256 << 20), true)
    })?;
    let medium = Where {
        medium: Some(format!("fat:{}", img.display())),
        appliance: None,
    };
    step(4, "capture the disk onto the medium", || {
        let r = crate::capture::capture(&crate::capture::Args {
            source: disk.display().to_string(),
            medium: medium.clone(),
            name: "demo".into(),
            recipient: vec![crate::keys::pub_path(&key).display().to_string()],
            passphrase_file: None,
            delta: false,
            rate_limit: None,
            key_cache: Some(work.join("keys")),
            chunk_size: "1MiB".into(),
            no_compress: false,
            threads: None,
            json: false,
            checkpoint_bytes: "64MiB".into(),
            passphrase_work_factor: None,
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
        Ok(())
    })?;
    for (n, what, identity) in [
        (5, "verify the medium without a key", None),
        (
            6,
            "verify the medium with the key (decrypt everything)",
            Some(key.clone()),
        ),
    ] {
        step(n, what, || {
            let code = crate::verify::run(crate::verify::Args {
                medium: medium.clone(),
                identity,
                passphrase_file: None,
                name: None,
                generation: None,
                json: false,
            })?;
            if code != OK {
                return Err(coded(FOUND, "verification found problems"));
            }
            Ok(())
        })?;
    }
    step(
        7,
        "ingest into a raw volume (no appliance here: --allow-unsealed)",
        || {
            crate::ingest::ingest(&crate::ingest::Args {
                medium: medium.clone(),
                name: "demo".into(),
                identity: Some(key.clone()),
                passphrase_file: None,
                target: format!("file:{}", vol.display()),
                generation: None,
                state_dir: Some(work.join("ingest-state")),
                force: true,
                allow_unsealed: true,
                rate_limit: None,
                checkpoint_bytes: "64MiB".into(),
                json: false,
            })?;
            Ok(())
        },
    )?;
    step(8, "compare the volume with the disk bit for bit", || {
        compare(&disk, &vol)
    })?;
    let report = step(
        9,
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
        return Err(coded(
            FOUND,
            format!(
                "the volume did not boot: {}\nlast console lines:\n{}",
                report.detail,
                report.console_tail(20)
            ),
        ));
    }
    println!(
        "    marker {:?} after {:.1} s",
        report.matched.as_deref().unwrap_or(""),
        report.time_to_marker_secs.unwrap_or(0.0)
    );
    Ok(OK)
}

/// Compare two files; an error names the first differing byte.
pub fn compare(a: &Path, b: &Path) -> anyhow::Result<()> {
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
