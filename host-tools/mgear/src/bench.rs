//! `mgear bench`: capture and ingest throughput against `dd` and `qemu-img`
//! measured in the same run, on the same files, plus peak memory.
//!
//! ```text
//! mgear bench [--size 4GiB] [--pattern random|mix|zeros|sparse|both|all]
//!             [--medium fat|dir|both] [--workdir DIR] [--rbd POOL] [--json]
//! ```
//!
//! For each pattern a source file is generated (`random`: incompressible;
//! `mix`: per MiB, 40% zeros, 30% text, 30% random; `zeros`: written zeros;
//! `sparse`: a file that is one hole), then timed in one run:
//! - `dd bs=4M conv=fsync` of the source into the medium directory: the
//!   baseline for capture (moving those bytes onto that medium);
//! - `mgear capture` onto a `dir:` medium there and onto a FAT32 image
//!   there (`--medium`, default both; the FAT steps are prefixed `fat: `),
//!   with its CPU time and CPU-seconds per GiB of source;
//! - `dd` of the medium's capture files (what ingest reads) into a target
//!   file with fsync: the baseline for ingest (on a FAT image, as many
//!   bytes of the image as the capture stored);
//! - `mgear ingest` back to a raw file (verifying every record and the
//!   written volume);
//! - `qemu-img convert -O qcow2` of the source, for reference;
//! - with `--rbd POOL`: `mgear ingest` into a new RBD image of POOL against
//!   `qemu-img convert -W -m 16` of the raw source into the same pool, in the
//!   same run (its `x` ratio is against that convert, not dd).
//!
//! Ratios are throughput relative to the matching `dd` baseline (MB/s of
//! disk bytes for mgear, MB/s of the bytes dd moved for dd), so 1.0 or more
//! is as fast as `dd`; for capture both move the same source bytes.
//! The issue's targets are printed next to the figures: capture and ingest
//! at least 0.85x `dd`, zero regions at least 5 GB/s, peak RSS at most 256 MiB.
//! The source is freshly written, so every reader sees it equally in the
//! page cache; the figures compare the pipelines, not the disk.
//! Peak RSS is the process's VmHWM (capture and ingest run in-process).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::Context;
use rand::{Rng, RngCore, SeedableRng};
use serde::Serialize;

use crate::medium::Where;
use crate::units::{human_bytes, parse_size};

/// Arguments of `mgear bench`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Size of the generated source disk.
    #[arg(long, default_value = "4GiB")]
    pub size: String,
    /// Data pattern: random, mix (40% zeros / 30% text / 30% random), zeros
    /// (written), sparse (one hole), both (random and mix) or all.
    #[arg(long, default_value = "all")]
    pub pattern: String,
    /// Medium to capture onto and ingest from: fat (a FAT32 image, as users
    /// carry), dir (a directory) or both.
    #[arg(long, default_value = "both")]
    pub medium: String,
    /// Work directory (needs about 3x --size free) [default: a temporary directory].
    #[arg(long)]
    pub workdir: Option<PathBuf>,
    /// Also ingest into a Ceph RBD image in this pool and time `qemu-img convert` of the same
    /// raw disk into the same pool (cluster from CEPH_CONF, user from CEPH_ARGS, e.g. `--id
    /// cinder`; the cloud lab's are in `scripts/cloud-lab.sh env`).
    #[arg(long, value_name = "POOL")]
    pub rbd: Option<String>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// One timed run.
#[derive(Debug, Serialize)]
pub struct Timing {
    pub what: String,
    pub seconds: f64,
    pub mb_per_s: f64,
    /// Throughput relative to the matching `dd` baseline (1.0 = as fast as dd).
    pub vs_dd: Option<f64>,
    /// CPU seconds (user + system) the step took, when it ran in-process.
    pub cpu_seconds: Option<f64>,
    /// `cpu_seconds` per GiB of source disk.
    pub cpu_s_per_gib: Option<f64>,
    /// Bytes the result occupies (medium bytes for capture).
    pub output_bytes: Option<u64>,
}

/// Results for one pattern.
#[derive(Debug, Serialize)]
pub struct PatternReport {
    pub pattern: String,
    pub size: u64,
    pub timings: Vec<Timing>,
}

/// What `bench --json` prints.
#[derive(Debug, Serialize)]
pub struct Report {
    pub command: &'static str,
    pub patterns: Vec<PatternReport>,
    pub peak_rss_bytes: Option<u64>,
    /// The issue's targets, each with whether this run met it.
    pub targets: Vec<Target>,
}

/// One performance target and this run's figure for it.
#[derive(Debug, Serialize)]
pub struct Target {
    pub what: String,
    pub wanted: String,
    pub measured: String,
    pub met: bool,
}

/// Bytes in the files under `dir` of a store (what a capture stored).
fn store_bytes(store: &mut dyn image_format::Store, dir: &str) -> u64 {
    let Ok(entries) = store.list(dir) else {
        return 0;
    };
    entries
        .into_iter()
        .map(|e| {
            let path = if dir.is_empty() {
                e.name
            } else {
                format!("{dir}/{}", e.name)
            };
            match e.kind {
                image_format::store::EntryKind::Dir => store_bytes(store, &path),
                image_format::store::EntryKind::File => e.len,
            }
        })
        .sum()
}

/// `dd` of the first `bytes` of `image` into `target` with fsync: the
/// ingest baseline on a FAT image (the capture's files fill its start).
fn dd_prefix(image: &Path, bytes: u64, target: &Path) -> anyhow::Result<f64> {
    timed(|| {
        crate::tools::run(
            Command::new("sh")
                .arg("-c")
                .arg(r#"head -c "$1" "$2" | dd of="$3" bs=4M iflag=fullblock conv=fsync status=none"#)
                .arg("sh")
                .arg(bytes.to_string())
                .arg(image)
                .arg(target),
        )
    })
}

/// Peak resident set size of this process (VmHWM).
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Write `size` bytes of `pattern` to `path`, one MiB at a time.
pub fn generate(path: &Path, size: u64, pattern: &str) -> anyhow::Result<()> {
    if pattern == "sparse" {
        let f =
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        f.set_len(size)?;
        return Ok(());
    }
    const WORDS: &[&str] = &[
        "kernel", "module", "config", "the", "of", "and", "usr", "lib", "share", "error",
        "warning", "systemd", "service", "network", "0x7f", "return", "int", "void", "struct", "=",
        "{", "}", ";", "\n",
    ];
    let mut rng = rand::rngs::SmallRng::seed_from_u64(0x006d_6765_6172);
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
    );
    let mut block = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        let kind = match pattern {
            "random" => 2,
            "zeros" => 0,
            _ => match rng.gen_range(0..10) {
                0..=3 => 0,
                4..=6 => 1,
                _ => 2,
            },
        };
        match kind {
            0 => block[..n].fill(0),
            1 => {
                let mut i = 0;
                while i < n {
                    let w = WORDS[rng.gen_range(0..WORDS.len())].as_bytes();
                    let k = w.len().min(n - i);
                    block[i..i + k].copy_from_slice(&w[..k]);
                    i += k;
                    if i < n {
                        block[i] = b' ';
                        i += 1;
                    }
                }
            }
            _ => rng.fill_bytes(&mut block[..n]),
        }
        f.write_all(&block[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    f.get_ref().sync_all()?;
    Ok(())
}

fn timed(f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed().as_secs_f64())
}

/// Bytes of all files under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let mut files = Vec::new();
    files_under(dir, &mut files);
    files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum()
}

/// Files under `dir`, recursively, in name order.
fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        let mut entries: Vec<_> = rd.flatten().map(|e| e.path()).collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                files_under(&p, out);
            } else {
                out.push(p);
            }
        }
    }
}

/// `dd`'s time to move `files` (concatenated) into `target` with fsync.
fn dd_files(files: &[PathBuf], target: &Path) -> anyhow::Result<f64> {
    timed(|| {
        crate::tools::run(
            Command::new("sh")
                .arg("-c")
                .arg(r#"t="$1"; shift; cat "$@" | dd of="$t" bs=4M iflag=fullblock conv=fsync status=none"#)
                .arg("sh")
                .arg(target)
                .args(files),
        )
    })
}

/// Run `mgear bench`.
pub fn run(args: Args) -> anyhow::Result<i32> {
    let size = parse_size(&args.size)?;
    if size < (1 << 20) {
        return Err(crate::exit::usage("--size must be at least 1MiB"));
    }
    let patterns: Vec<&str> = match args.pattern.as_str() {
        "all" => vec!["random", "mix", "zeros", "sparse"],
        "both" => vec!["random", "mix"],
        p @ ("random" | "mix" | "zeros" | "sparse") => vec![p],
        other => {
            return Err(crate::exit::usage(format!(
                "--pattern {other}: use random, mix, zeros, sparse, both or all"
            )))
        }
    };
    let media: Vec<&str> = match args.medium.as_str() {
        "both" => vec!["dir", "fat"],
        m @ ("dir" | "fat") => vec![m],
        other => {
            return Err(crate::exit::usage(format!(
                "--medium {other}: use fat, dir or both"
            )))
        }
    };
    let dd = crate::tools::which("dd");
    let qemu_img = crate::tools::which("qemu-img");
    let temp;
    let work = match &args.workdir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            temp = tempfile::Builder::new().prefix("mgear-bench-").tempdir()?;
            temp.path().to_owned()
        }
    };
    let mut report = Report {
        command: "bench",
        patterns: Vec::new(),
        peak_rss_bytes: None,
        targets: Vec::new(),
    };
    for pattern in patterns {
        let src = work.join(format!("source-{pattern}.raw"));
        let vol = work.join("vol.raw");
        let _ = std::fs::remove_file(&vol);
        if !args.json {
            eprintln!("generating {} of {pattern} data ...", human_bytes(size));
        }
        generate(&src, size, pattern)?;
        let key = work.join("bench.key");
        let _ = std::fs::remove_file(&key);
        let _ = std::fs::remove_file(crate::keys::pub_path(&key));
        crate::keys::keygen_quiet(&key)?;
        let mut timings = Vec::new();

        let mut dd_rate = None;
        if dd.is_some() {
            let out = work.join("dd.out");
            let secs = dd_files(std::slice::from_ref(&src), &out)?;
            std::fs::remove_file(&out)?;
            dd_rate = Some(crate::progress::mb_per_s(size, secs));
            timings.push(Timing {
                what: "dd source -> medium (fsync)".into(),
                seconds: secs,
                mb_per_s: crate::progress::mb_per_s(size, secs),
                vs_dd: Some(1.0),
                cpu_seconds: None,
                cpu_s_per_gib: None,
                output_bytes: Some(size),
            });
        }
        // mgear's throughput over the baseline's: above 1.0 is faster than dd.
        let ratio =
            |base: Option<f64>, rate: f64| base.map(|b| if b > 0.0 { rate / b } else { 0.0 });
        let per_gib = |cpu: f64| Some(cpu / (size as f64 / (1u64 << 30) as f64));

        for kind in &media {
            // Step names: the dir: medium keeps the historical names, the
            // FAT32 image's carry a "fat: " prefix.
            let prefix = if *kind == "fat" { "fat: " } else { "" };
            let medium_dir = work.join("medium");
            let medium_img = work.join("medium.img");
            let _ = std::fs::remove_dir_all(&medium_dir);
            let _ = std::fs::remove_file(&medium_img);
            let medium = if *kind == "fat" {
                // Room for incompressible data plus records, index and FAT.
                let bytes = size + size / 8 + (64 << 20);
                crate::medium::format_fat(&medium_img, Some(bytes), true)?;
                Where {
                    medium: Some(format!("fat:{}", medium_img.display())),
                    appliance: None,
                }
            } else {
                std::fs::create_dir_all(&medium_dir)?;
                Where {
                    medium: Some(format!("dir:{}", medium_dir.display())),
                    appliance: None,
                }
            };
            let _ = std::fs::remove_dir_all(work.join("keys"));

            let cpu = crate::progress::cpu_seconds();
            let secs = timed(|| {
                crate::capture::capture(&crate::capture::Args {
                    dirty_bitmap: None,
                    source: Some(src.display().to_string()),
                    medium: medium.clone(),
                    name: "bench".into(),
                    recipient: vec![crate::keys::pub_path(&key).display().to_string()],
                    passphrase_file: None,
                    passphrase_generate: false,
                    delta: false,
                    rate_limit: None,
                    key_cache: Some(work.join("keys")),
                    chunk_size: "1MiB".into(),
                    no_compress: false,
                    threads: None,
                    json: true,
                    report: None,
                    checkpoint_bytes: "64MiB".into(),
                    passphrase_work_factor: None,
                    dry_run: false,
                    abort: false,
                    skip_space_check: false,
                    sign: None,
                })
                .map(|_| ())
            })?;
            let capture_cpu = crate::progress::cpu_seconds() - cpu;
            let medium_bytes = if *kind == "fat" {
                let mut m = medium.open_read_only()?;
                let n = store_bytes(m.store(), "");
                m.close()?;
                n
            } else {
                dir_bytes(&medium_dir)
            };
            let rate = crate::progress::mb_per_s(size, secs);
            timings.push(Timing {
                what: format!("{prefix}mgear capture"),
                seconds: secs,
                mb_per_s: rate,
                vs_dd: ratio(dd_rate, rate),
                cpu_seconds: Some(capture_cpu),
                cpu_s_per_gib: per_gib(capture_cpu),
                output_bytes: Some(medium_bytes),
            });

            let mut dd_medium_rate = None;
            // For an all-zero source the medium holds almost nothing: a dd of
            // it is no baseline for ingest, which writes (sparsely) the whole disk.
            if dd.is_some() && !matches!(pattern, "zeros" | "sparse") {
                let out = work.join("dd-medium.out");
                let secs = if *kind == "fat" {
                    // As many bytes of the image as the capture stored.
                    dd_prefix(&medium_img, medium_bytes, &out)?
                } else {
                    let mut files = Vec::new();
                    files_under(&medium_dir.join("MGEAR"), &mut files);
                    dd_files(&files, &out)?
                };
                std::fs::remove_file(&out)?;
                dd_medium_rate = Some(crate::progress::mb_per_s(medium_bytes, secs));
                timings.push(Timing {
                    what: format!("{prefix}dd medium files -> target (fsync)"),
                    seconds: secs,
                    mb_per_s: crate::progress::mb_per_s(medium_bytes, secs),
                    vs_dd: Some(1.0),
                    cpu_seconds: None,
                    cpu_s_per_gib: None,
                    output_bytes: Some(medium_bytes),
                });
            }

            let cpu = crate::progress::cpu_seconds();
            let secs = timed(|| {
                crate::ingest::ingest(&crate::ingest::Args {
                    boot: false,
                    wait_for: String::new(),
                    timeout: 0,
                    boot_bus: "auto".into(),
                    flavor: None,
                    adapt: false,
                    medium: medium.clone(),
                    name: "bench".into(),
                    identity: Some(key.clone()),
                    passphrase_file: None,
                    target: format!("file:{}", vol.display()),
                    register_image: false,
                    generation: None,
                    state_dir: Some(work.join("ingest-state")),
                    force: true,
                    allow_unsealed: true,
                    // A benchmark measures speed, not origin.
                    trust: crate::trust::TrustArgs {
                        allow_untrusted: true,
                        ..Default::default()
                    },
                    rate_limit: None,
                    checkpoint_bytes: "64MiB".into(),
                    json: true,
                    report: None,
                })
                .map(|_| ())
            })?;
            let ingest_cpu = crate::progress::cpu_seconds() - cpu;
            let rate = crate::progress::mb_per_s(size, secs);
            timings.push(Timing {
                what: format!("{prefix}mgear ingest (verifies, then reads back)"),
                seconds: secs,
                mb_per_s: rate,
                vs_dd: ratio(dd_medium_rate, rate),
                cpu_seconds: Some(ingest_cpu),
                cpu_s_per_gib: per_gib(ingest_cpu),
                output_bytes: None,
            });
            std::fs::remove_file(&vol)?;
            if let (Some(pool), "dir") = (&args.rbd, *kind) {
                timings.extend(rbd_rows(pool, &src, &medium, &key, &work, size)?);
            }
            let _ = std::fs::remove_dir_all(&medium_dir);
            let _ = std::fs::remove_file(&medium_img);
        }

        if qemu_img.is_some() {
            let out = work.join("convert.qcow2");
            let secs = timed(|| {
                crate::tools::run(
                    Command::new("qemu-img")
                        .args(["convert", "-f", "raw", "-O", "qcow2"])
                        .arg(&src)
                        .arg(&out),
                )
            })?;
            let bytes = std::fs::metadata(&out).map(|m| m.len()).ok();
            std::fs::remove_file(&out)?;
            let rate = crate::progress::mb_per_s(size, secs);
            timings.push(Timing {
                what: "qemu-img convert -O qcow2 (no fsync)".into(),
                seconds: secs,
                mb_per_s: rate,
                vs_dd: ratio(dd_rate, rate),
                cpu_seconds: None,
                cpu_s_per_gib: None,
                output_bytes: bytes,
            });
        }
        std::fs::remove_file(&src)?;
        report.patterns.push(PatternReport {
            pattern: pattern.into(),
            size,
            timings,
        });
    }
    report.peak_rss_bytes = peak_rss();
    report.targets = targets(&report);
    if args.json {
        crate::progress::print_json(&report)?;
        return Ok(crate::exit::OK);
    }
    for p in &report.patterns {
        println!("pattern {} ({}):", p.pattern, human_bytes(p.size));
        for t in &p.timings {
            println!(
                "  {:<47} {:>8.1} MB/s {:>7.2} s{}{}{}{}",
                t.what,
                t.mb_per_s,
                t.seconds,
                t.vs_dd.map_or(String::new(), |v| format!(
                    "  x{v:.2} vs {}",
                    if t.what.starts_with("rbd:") {
                        "convert"
                    } else {
                        "dd"
                    }
                )),
                t.cpu_seconds
                    .map_or(String::new(), |c| format!("  cpu {c:.2} s")),
                t.cpu_s_per_gib
                    .map_or(String::new(), |c| format!(" ({c:.1} CPU-s/GiB)")),
                t.output_bytes
                    .map_or(String::new(), |b| format!("  output {}", human_bytes(b)))
            );
        }
    }
    if dd.is_none() {
        println!("dd not found (coreutils): no dd baseline");
    }
    if qemu_img.is_none() {
        println!("qemu-img not found: apt-get install qemu-utils for the qemu-img baseline");
    }
    if let Some(r) = report.peak_rss_bytes {
        println!("peak RSS: {}", human_bytes(r));
    }
    println!("targets:");
    for t in &report.targets {
        println!(
            "  {:<44} wanted {:<12} measured {:<12} {}",
            t.what,
            t.wanted,
            t.measured,
            if t.met { "met" } else { "NOT met" }
        );
    }
    Ok(crate::exit::OK)
}

/// The RBD row: `mgear ingest` into a new image of `pool` against `qemu-img convert` of the
/// raw source into another (both created by the step, `-W -m 16` as the cloud lab measured
/// qemu-img at its best), on the same cluster, in this run. Both images are removed.
fn rbd_rows(
    pool: &str,
    src: &Path,
    medium: &Where,
    key: &Path,
    work: &Path,
    size: u64,
) -> anyhow::Result<Vec<Timing>> {
    let base = format!("mgear-bench-{}", std::process::id());
    let spec = |suffix: &str| -> anyhow::Result<mgear_volume::RbdSpec> {
        mgear_volume::RbdSpec::parse(&format!("rbd:{pool}/{base}-{suffix}"))
            .map_err(crate::spec::volume_err)
    };
    let (ours, theirs) = (spec("ingest")?, spec("convert")?);
    let remove = |s: &mgear_volume::RbdSpec| {
        let mut c = Command::new("rbd");
        if let Some(conf) = &s.conf {
            c.arg("-c").arg(conf);
        }
        if let Some(u) = &s.user {
            c.args(["--id", u.as_str()]);
        }
        let _ = c
            .args(["rm", "--no-progress", &s.image_spec()])
            .stdin(std::process::Stdio::null())
            .output();
    };
    let ingest = timed(|| {
        crate::ingest::ingest(&crate::ingest::Args {
            boot: false,
            wait_for: String::new(),
            timeout: 0,
            boot_bus: "auto".into(),
            flavor: None,
            register_image: false,
            report: None,
            adapt: false,
            medium: medium.clone(),
            name: "bench".into(),
            identity: Some(key.to_owned()),
            passphrase_file: None,
            target: ours.to_string(),
            generation: None,
            state_dir: Some(work.join("ingest-state-rbd")),
            force: true,
            allow_unsealed: true,
            trust: crate::trust::TrustArgs {
                allow_untrusted: true,
                ..Default::default()
            },
            rate_limit: None,
            checkpoint_bytes: "64MiB".into(),
            json: true,
        })
        .map(|_| ())
    });
    remove(&ours);
    let ingest = ingest?;
    let convert = timed(|| {
        crate::tools::run(
            Command::new("qemu-img")
                .args(["convert", "-W", "-m", "16", "-f", "raw", "-O", "raw"])
                .arg(src)
                .arg(theirs.qemu_filename()),
        )
    });
    remove(&theirs);
    let convert = convert?;
    let (ingest_rate, convert_rate) = (
        crate::progress::mb_per_s(size, ingest),
        crate::progress::mb_per_s(size, convert),
    );
    Ok(vec![
        Timing {
            what: "rbd: qemu-img convert -W -m 16 -> rbd".into(),
            seconds: convert,
            mb_per_s: convert_rate,
            vs_dd: None,
            cpu_seconds: None,
            cpu_s_per_gib: None,
            output_bytes: None,
        },
        Timing {
            what: "rbd: mgear ingest -> rbd (verifies, reads back)".into(),
            seconds: ingest,
            mb_per_s: ingest_rate,
            // Here the baseline is qemu-img convert into the same pool, not dd.
            vs_dd: Some(if convert_rate > 0.0 {
                ingest_rate / convert_rate
            } else {
                0.0
            }),
            cpu_seconds: None,
            cpu_s_per_gib: None,
            output_bytes: None,
        },
    ])
}

/// Checks the issue's targets against the figures of this run.
fn targets(report: &Report) -> Vec<Target> {
    let mut out = Vec::new();
    let find = |pattern: &str, what: &str| {
        report
            .patterns
            .iter()
            .find(|p| p.pattern == pattern)
            .and_then(|p| p.timings.iter().find(|t| t.what.starts_with(what)))
    };
    for pattern in ["random", "mix"] {
        for (what, label) in [
            ("mgear capture", "capture"),
            ("mgear ingest", "ingest"),
            ("fat: mgear capture", "fat: capture"),
            ("fat: mgear ingest", "fat: ingest"),
        ] {
            if let Some(v) = find(pattern, what).and_then(|t| t.vs_dd) {
                out.push(Target {
                    what: format!("{label} of {pattern} data vs dd"),
                    wanted: ">= x0.85".into(),
                    measured: format!("x{v:.2}"),
                    met: v >= 0.85,
                });
            }
        }
    }
    for pattern in ["random", "mix"] {
        if let Some(v) = find(pattern, "rbd: mgear ingest").and_then(|t| t.vs_dd) {
            out.push(Target {
                what: format!("ingest of {pattern} data into RBD vs qemu-img convert"),
                wanted: ">= x1.00".into(),
                measured: format!("x{v:.2}"),
                met: v >= 1.0,
            });
        }
    }
    for pattern in ["zeros", "sparse"] {
        if let Some(t) = find(pattern, "mgear capture") {
            let gbs = t.mb_per_s / 1000.0;
            out.push(Target {
                what: format!("capture of {pattern} (zero regions)"),
                wanted: ">= 5 GB/s".into(),
                measured: format!("{gbs:.1} GB/s"),
                met: gbs >= 5.0,
            });
        }
    }
    if let Some(r) = report.peak_rss_bytes {
        out.push(Target {
            what: "peak RSS".into(),
            wanted: "<= 256 MiB".into(),
            measured: human_bytes(r),
            met: r <= 256 << 20,
        });
    }
    out
}
