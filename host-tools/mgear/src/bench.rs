//! `mgear bench`: capture and ingest throughput against `dd` and `qemu-img`
//! measured in the same run, on the same files, plus peak memory.
//!
//! ```text
//! mgear bench [--size 1GiB] [--pattern random|mix|zeros|sparse|both|all]
//!             [--medium fat|dir|both] [--threads N] [--scale 256MiB,4GiB|off]
//!             [--no-appliance | --appliance-only] [--workdir DIR] [--rbd POOL]
//!             [--volume-dir DIR] [--repeat 3] [--json]
//! ```
//!
//! For each pattern a source file is generated (`random`: incompressible;
//! `mix`: per MiB, 40% zeros, 30% text, 30% random; `zeros`: written zeros;
//! `sparse`: a file that is one hole), then timed in one run:
//! - `dd bs=4M conv=fsync` of the source into the medium directory, once
//!   through the page cache and once with `oflag=direct` (as mgear writes),
//!   the faster of the two ([`dd_either`]; every `dd` baseline is taken so):
//!   the baseline for capture (moving those bytes onto that medium);
//! - `mgear capture` onto a `dir:` medium there and onto a FAT32 image
//!   there (`--medium`, default both; the FAT steps are prefixed `fat: `),
//!   with its CPU time and CPU-seconds per GiB of source;
//! - `dd` of the medium's capture files (what ingest reads) into a target
//!   file with fsync: the baseline for ingest (on a FAT image, as many
//!   bytes of the image as the capture stored);
//! - that `dd` followed by a direct read of its copy: the three passes ingest
//!   makes on one disk (read the medium, write the volume, read it back);
//! - `mgear ingest` back to a raw file (verifying every record and the
//!   written volume), against both;
//! - with `--volume-dir DIR` (another file system than the work directory's):
//!   the same `dd` and ingest into DIR, the layout of a target site, where the
//!   medium and the cloud volume are not one disk; the ingest targets are then
//!   judged there, unless DIR is a tmpfs (no disk under it, its fsync a no-op,
//!   the read-back a read of memory: shown, never judged);
//! - `qemu-img convert -O qcow2` of the source, for reference;
//! - on random data, once (with the FAT medium): a capture held to 50 MiB/s
//!   (its CPU time over wall time over cores: its share of the machine,
//!   next to `dd`'s at that rate, from `dd`'s CPU per GiB in this run); the
//!   random captures of `--scale SMALL,LARGE` onto FAT images, each against
//!   `dd` of its own source (the CPU per byte must not grow with size); a
//!   machine set of two disks against one disk of the same bytes (a set must
//!   capture at the same throughput per byte); and,
//!   when `mgear-appliance-sim` is next to `mgear` or on PATH, a capture
//!   through its NBD export (each run right after a direct `fat:` capture,
//!   its baseline: the better of those and the main capture row) and its seal (keyless
//!   verify, file and region hashes) against `dd` reading the medium image,
//!   with the simulator's CPU and peak RSS. Both the read and the seal
//!   start with none of the image in the page cache (it is synced and its
//!   pages dropped, `posix_fadvise(DONTNEED)`): a medium arrives as a USB
//!   disk or the appliance's storage, not as cached memory;
//! - with `--rbd POOL`: `mgear ingest` into a new RBD image of POOL against
//!   `qemu-img convert -W -m 16` of the raw source into the same pool, in the
//!   same run (its `x` ratio is against that convert, not dd), and that
//!   convert followed by `qemu-img compare` of the image with the source (a
//!   convert checked as ingest always checks what it writes). Convert reads
//!   the raw source from the disk (dropped from the page cache first), as
//!   ingest reads the medium;
//!
//! Ratios are throughput relative to the matching `dd` baseline (MB/s of
//! disk bytes for mgear, MB/s of the bytes dd moved for dd), so 1.0 or more
//! is as fast as `dd`; for capture both move the same source bytes.
//! The issue's targets are printed next to the figures: capture and ingest
//! at least 0.85x `dd`, zero regions at least 5 GB/s, peak RSS at most 256 MiB.
//! Capture reads its source with `O_DIRECT`, from the disk: the source is
//! dropped from the page cache before each capture and each `dd` of it, so
//! both read it from the disk (a `dd` reading it from memory was a baseline
//! capture could not be compared with). The medium likewise before each
//! ingest and each `dd` of it (`medium_cold`).
//! The main captures and ingests, their `dd` baselines, the capture held
//! to 50 MiB/s, and the capture through the simulator and its direct
//! baseline run `--repeat` times (3):
//! each row gives the shortest time and the least CPU of its runs
//! ([`best_of`]). A step and its baseline take turns (a `dd`, a capture, a
//! `dd`, a capture...; a direct capture, one through the simulator...): this
//! VM's disk has slow spells of seconds, and with every baseline run first
//! and every step after, a ratio measured the spells (the capture row read
//! x0.62 and x0.80 of `dd` within the hour, the capture unchanged).
//! Every capture and ingest runs as a child `mgear` process, as a user runs
//! it; its CPU seconds and peak RSS are its own rusage (`mgear_step`), and
//! the peak RSS printed is the largest of them (or of the bench's own
//! process, if larger). The baselines' CPU (`dd`, `cat`) is their rusage as
//! children too.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::error::Context;
use rand::{Rng, RngCore, SeedableRng};
use serde::Serialize;

use crate::medium::Where;
use crate::units::{human_bytes, parse_size};

/// The data patterns `bench` generates (`--pattern`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Patterns {
    Random,
    Mix,
    Zeros,
    Sparse,
    /// Random and mix.
    Both,
    /// Every pattern.
    All,
}

impl std::str::FromStr for Patterns {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        Ok(match s {
            "random" => Patterns::Random,
            "mix" => Patterns::Mix,
            "zeros" => Patterns::Zeros,
            "sparse" => Patterns::Sparse,
            "both" => Patterns::Both,
            "all" => Patterns::All,
            other => {
                return Err(crate::exit::usage(format!(
                    "--pattern {other}: use random, mix, zeros, sparse, both or all"
                )))
            }
        })
    }
}

impl Patterns {
    /// The patterns, in the order the bench runs them.
    fn names(self) -> Vec<&'static str> {
        match self {
            Patterns::Random => vec!["random"],
            Patterns::Mix => vec!["mix"],
            Patterns::Zeros => vec!["zeros"],
            Patterns::Sparse => vec!["sparse"],
            Patterns::Both => vec!["random", "mix"],
            Patterns::All => vec!["random", "mix", "zeros", "sparse"],
        }
    }
}

/// The media `bench` captures onto and ingests from (`--medium`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Media {
    /// A FAT32 image, as users carry.
    Fat,
    /// A directory.
    Dir,
    Both,
}

impl std::str::FromStr for Media {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        Ok(match s {
            "fat" => Media::Fat,
            "dir" => Media::Dir,
            "both" => Media::Both,
            other => {
                return Err(crate::exit::usage(format!(
                    "--medium {other}: use fat, dir or both"
                )))
            }
        })
    }
}

impl Media {
    fn names(self) -> Vec<&'static str> {
        match self {
            Media::Fat => vec!["fat"],
            Media::Dir => vec!["dir"],
            Media::Both => vec!["dir", "fat"],
        }
    }
}

/// `mgear bench`, typed (the binary's `cli::bench` parses the flags into it).
#[derive(Debug)]
pub struct Plan {
    /// Size of the generated source disk, bytes (at least 1 MiB).
    pub size: u64,
    /// Data pattern: random, mix (40% zeros / 30% text / 30% random), zeros
    /// (written), sparse (one hole), both (random and mix) or all.
    pub pattern: Patterns,
    /// Medium to capture onto and ingest from: fat (a FAT32 image, as users
    /// carry), dir (a directory) or both.
    pub medium: Media,
    /// Work directory (needs about 3x --size free) [default: a temporary directory].
    pub workdir: Option<PathBuf>,
    /// Also ingest into a Ceph RBD image in this pool and time `qemu-img convert` of the same
    /// raw disk into the same pool (cluster from CEPH_CONF, user from CEPH_ARGS, e.g. `--id
    /// cinder`; the cloud lab's are in `scripts/cloud-lab.sh env`).
    pub rbd: Option<String>,
    /// Also ingest into a volume in this directory, on another device than the work
    /// directory's (`--volume-dir`): [`second_device`].
    pub volume_dir: Option<PathBuf>,
    /// Encoder threads for every capture [default: number of CPUs]; compare `--threads 1`
    /// with `--threads 2` to see how capture scales.
    pub threads: Option<usize>,
    /// Sizes of the two random captures onto a FAT32 image whose CPU cost per byte is
    /// compared (default 256MiB,4GiB, the issue's target; `None` skips them): [`scale_sizes`].
    pub scale: Option<(u64, u64)>,
    /// Skip the rows that run `mgear-appliance-sim` (capture through its NBD export, seal).
    pub no_appliance: bool,
    /// Run only the appliance rows (capture through `mgear-appliance-sim`, a read of its medium,
    /// its seal) on random data: the seal's figures without the rest of the bench.
    pub appliance_only: bool,
    /// Runs of each repeated step (at least 1): [`best_of`].
    pub repeat: usize,
    /// Print one JSON object.
    pub json: bool,
}

/// A second device for the ingest rows (`--volume-dir DIR`): a directory made under `dir`
/// (removed when dropped) and whether `dir` is a tmpfs. `dir` must exist, lie on another file
/// system than the work directory and have room for the volume (exit 2 otherwise).
fn second_device(dir: &Path, work: &Path, size: u64) -> crate::Result<(tempfile::TempDir, bool)> {
    use std::os::unix::fs::MetadataExt;
    let refuse = |why: String| {
        crate::exit::usage(format!(
            "--volume-dir {}: {why}: give a directory on another disk than the work directory's",
            dir.display()
        ))
    };
    let (Ok(here), Ok(there)) = (std::fs::metadata(work), std::fs::metadata(dir)) else {
        return Err(refuse("does not exist".into()));
    };
    if !there.is_dir() {
        return Err(refuse("is not a directory".into()));
    }
    if here.dev() == there.dev() {
        return Err(refuse(format!(
            "is on the same file system as the work directory {}",
            work.display()
        )));
    }
    // The volume, or dd's copy of the medium (never both at once), and some slack.
    let need = fat_bytes(size);
    if let Ok(st) = nix::sys::statvfs::statvfs(dir) {
        #[allow(clippy::useless_conversion)]
        let free = u64::from(st.blocks_available()).saturating_mul(u64::from(st.fragment_size()));
        if free < need {
            return Err(refuse(format!(
                "has {} free, the rows need {}",
                human_bytes(free),
                human_bytes(need)
            )));
        }
    }
    let tmpfs = nix::sys::statfs::statfs(dir)
        .is_ok_and(|f| f.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC);
    let made = tempfile::Builder::new()
        .prefix("mgear-bench-vol-")
        .tempdir_in(dir)
        .map_err(|e| refuse(format!("cannot hold a directory ({e})")))?;
    Ok((made, tmpfs))
}

/// One timed run.
#[derive(Debug, Serialize)]
pub struct Timing {
    pub what: String,
    pub seconds: f64,
    pub mb_per_s: f64,
    /// Throughput relative to the matching baseline (1.0 = as fast as it):
    /// `dd` unless `baseline` names another row.
    pub vs_dd: Option<f64>,
    /// The row `vs_dd` compares with when it is not the `dd` baseline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<String>,
    /// CPU seconds (user + system) the step took, when it ran in-process.
    pub cpu_seconds: Option<f64>,
    /// `cpu_seconds` per GiB of source disk.
    pub cpu_s_per_gib: Option<f64>,
    /// Bytes the result occupies (medium bytes for capture).
    pub output_bytes: Option<u64>,
    /// Share of the whole machine (all cores) the step's CPU time is over
    /// its wall time, for the rate-limited capture.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_share: Option<f64>,
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
    /// Runs of each repeated step (`--repeat`): its best is reported.
    pub repeat: usize,
    pub patterns: Vec<PatternReport>,
    pub peak_rss_bytes: Option<u64>,
    /// Peak RSS of `mgear-appliance-sim` during the appliance rows.
    pub sim_peak_rss_bytes: Option<u64>,
    /// What this run could not measure, and why.
    pub notes: Vec<String>,
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

/// What a `dd` baseline copies.
#[derive(Clone, Copy)]
enum DdFrom<'a> {
    /// These files, one after the other (a `dir:` medium's capture files through `cat`).
    Files(&'a [PathBuf]),
    /// The first bytes of one file (the source; a FAT image, whose start the capture's files
    /// fill).
    Prefix(&'a Path, u64),
}

/// `dd` of `from` into `target` with fsync, through the page cache or with `O_DIRECT`
/// (`oflag=direct`, as mgear writes): its seconds. One `dd` reads a single file itself: through
/// a `head | dd` pipe it copied every byte twice more and was up to a third slower.
fn dd_copy(from: DdFrom<'_>, target: &Path, direct: bool) -> crate::Result<f64> {
    let operand = |name: &str, path: &Path| {
        let mut o = std::ffi::OsString::from(name);
        o.push(path);
        o
    };
    let flags = if direct {
        "oflag=direct conv=fsync status=none"
    } else {
        "conv=fsync status=none"
    };
    timed(|| match from {
        DdFrom::Prefix(file, bytes) => crate::tools::run(
            Command::new("dd")
                .arg(operand("if=", file))
                .arg(operand("of=", target))
                .arg(format!("count={bytes}"))
                .args(["bs=4M", "iflag=count_bytes,fullblock"])
                .args(flags.split(' ')),
        ),
        DdFrom::Files(files) => crate::tools::run(
            Command::new("sh")
                .arg("-c")
                .arg(format!(
                    r#"t="$1"; shift; cat "$@" | dd of="$t" bs=4M iflag=fullblock {flags}"#
                ))
                .arg("sh")
                .arg(target)
                .args(files),
        ),
    })
}

/// The `dd` baseline of one run: the copy through the page cache and the one with
/// `O_DIRECT`, each after `before` (e.g. the medium dropped from the page cache) and followed
/// by `after` with its seconds (e.g. a read of the copy), the copy removed; the faster time
/// and the smaller CPU of the two. Which one wins depends on the disk and the size: the
/// buffered copy pays for dirty-page throttling, the direct one for requests the disk waits on.
fn dd_either(
    from: DdFrom<'_>,
    target: &Path,
    mut before: impl FnMut() -> crate::Result<()>,
    mut after: impl FnMut(f64) -> crate::Result<()>,
) -> crate::Result<(f64, f64)> {
    let (mut secs, mut cpu) = (f64::INFINITY, f64::INFINITY);
    for direct in [false, true] {
        before()?;
        let used = children_cpu_seconds();
        let s = dd_copy(from, target, direct)?;
        cpu = cpu.min(children_cpu_seconds() - used);
        secs = secs.min(s);
        after(s)?;
        std::fs::remove_file(target)?;
    }
    Ok((secs, cpu))
}

/// `dd`'s time to read `path` with `O_DIRECT` (from the disk, not the page
/// cache), as ingest reads back what it wrote.
fn dd_read_direct(path: &Path) -> crate::Result<f64> {
    timed(|| {
        crate::tools::run(
            Command::new("dd")
                .arg(format!("if={}", path.display()))
                .args(["of=/dev/null", "bs=4M", "iflag=direct", "status=none"]),
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
pub fn generate(path: &Path, size: u64, pattern: &str) -> crate::Result<()> {
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

/// Refuse to start a run that cannot fit in `work`: at its fullest a
/// pattern holds its source, the medium, `dd`'s copy and the volume (about
/// four times `--size`), the simulator's medium a capture per `--repeat`,
/// and the large scale capture its source and a FAT image (a little over
/// twice its size) beside the random source. A run
/// that fills the file system half-way wastes minutes and says less.
fn check_room(
    work: &Path,
    size: u64,
    scale_large: Option<u64>,
    repeat: usize,
) -> crate::Result<()> {
    // The simulator's medium holds one capture per run.
    let appliance = size.saturating_add(fat_bytes(size).saturating_mul(repeat as u64));
    let need = (size.saturating_mul(4)).max(appliance).max(
        scale_large
            .map(|l| size.saturating_add(l.saturating_mul(2)))
            .unwrap_or(0),
    );
    let Ok(st) = nix::sys::statvfs::statvfs(work) else {
        return Ok(()); // nothing to go by; the steps report their own errors
    };
    // `fsblkcnt_t` and `c_ulong` are u64 here, narrower on 32-bit targets.
    #[allow(clippy::useless_conversion)]
    let free = u64::from(st.blocks_available()).saturating_mul(u64::from(st.fragment_size()));
    if free < need {
        crate::bail!(
            "the work directory {} has {} free; this run needs about {} (--size {}{}): free \
             space there, give --workdir on a larger file system, or make the run smaller \
             (--scale off or --scale 256MiB,1GiB, a smaller --size)",
            work.display(),
            human_bytes(free),
            human_bytes(need),
            human_bytes(size),
            scale_large
                .map(|l| format!(", a scale capture of {}", human_bytes(l)))
                .unwrap_or_default()
        );
    }
    Ok(())
}

/// Seconds `f` took.
fn timed(f: impl FnOnce() -> crate::Result<()>) -> crate::Result<f64> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed().as_secs_f64())
}

/// `f` (a step returning its wall and CPU seconds) run `n` times (at least
/// once): the shortest wall time and the least CPU time of the runs. On a
/// shared machine (this VM's `dd` spends 0.4 to 8 CPU-seconds per GiB from
/// one minute to the next) other work only ever adds to either, so the
/// least of a few runs is the closest to what the step itself costs;
/// mgear's steps and their `dd` baselines are measured alike.
fn best_of(
    n: usize,
    mut f: impl FnMut() -> crate::Result<(f64, f64)>,
) -> crate::Result<(f64, f64)> {
    let (mut secs, mut cpu) = f()?;
    for _ in 1..n {
        let (s, c) = f()?;
        secs = secs.min(s);
        cpu = cpu.min(c);
    }
    Ok((secs, cpu))
}

/// The largest peak RSS of the `mgear` steps run so far (bytes).
static PEAK_STEP_RSS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Runs `mgear ARGS` (this executable) as a child, the way a user runs a
/// capture or an ingest: its wall seconds (spawn to reap) and CPU seconds
/// (user + system, its threads' and librbd's included), both from its own
/// rusage when it is reaped, which also gives its peak RSS; its stderr goes
/// to `work/step.log`, shown if it fails.
///
/// Why a process per step, not a call in this one: glibc keeps what a
/// thread's arena freed (up to `M_TRIM_THRESHOLD`, see `tune_allocator` in
/// main.rs), so steps run in one process summed their arenas' tops into one
/// peak (221-247 MiB, where no step alone needs 130), more so with more
/// cores, and each step's CPU counted its predecessors' leftovers.
fn mgear_step(args: &[std::ffi::OsString], work: &Path) -> crate::Result<(f64, f64)> {
    let exe = std::env::current_exe()?;
    let log_path = work.join("step.log");
    let log = std::fs::File::create(&log_path)?;
    let t = Instant::now();
    let child = Command::new(&exe)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    let (status, usage) = wait_with_usage(child)?;
    let secs = t.elapsed().as_secs_f64();
    let what = args
        .first()
        .map(|a| a.to_string_lossy())
        .unwrap_or_default();
    if !status.success() {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        crate::bail!(
            "mgear {what} failed in the benchmark ({status}): {}",
            log.trim()
        );
    }
    let tv = |t: nix::libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    // ru_maxrss is in KiB on Linux. It also counts this process's RSS when
    // the child was spawned (the kernel keeps the high-water mark of the
    // memory image exec replaced): at most this process's own peak, which
    // the report takes into its maximum anyway.
    let rss = u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024;
    PEAK_STEP_RSS.fetch_max(rss, std::sync::atomic::Ordering::Relaxed);
    Ok((secs, tv(usage.ru_utime) + tv(usage.ru_stime)))
}

/// Waits for `child` and returns how it ended and its own rusage
/// (`wait4`: `std` and `nix` reap without it; `RUSAGE_CHILDREN` would mix in
/// every other child's peak RSS).
fn wait_with_usage(
    child: std::process::Child,
) -> crate::Result<(std::process::ExitStatus, nix::libc::rusage)> {
    use std::os::unix::process::ExitStatusExt;
    let pid = nix::libc::pid_t::try_from(child.id())
        .map_err(|_| crate::error::Error::msg("child pid out of range"))?;
    let mut status: nix::libc::c_int = 0;
    // SAFETY: an all-zero rusage is a valid value of that plain C struct.
    let mut usage: nix::libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: wait4 writes only the status and rusage we pass, both
        // live locals; `pid` is our own child, which `std` has not reaped
        // (its `Child`, moved in here, is dropped unwaited).
        let r = unsafe { nix::libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            return Ok((std::process::ExitStatus::from_raw(status), usage));
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e).context("waiting for a benchmark step");
        }
    }
}

/// `--medium`/`--appliance` arguments naming `medium`.
fn medium_args(medium: &Where) -> Vec<std::ffi::OsString> {
    let mut a = Vec::new();
    for m in &medium.medium {
        a.push("--medium".into());
        a.push(m.into());
    }
    for p in &medium.appliance {
        a.push("--appliance".into());
        a.push(p.into());
    }
    a
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

/// Run `mgear bench`.
pub fn run(args: Plan) -> crate::Result<i32> {
    let size = args.size;
    if size < (1 << 20) {
        return Err(crate::exit::usage("--size must be at least 1MiB"));
    }
    let (patterns, media) = if args.appliance_only {
        // The appliance rows run on random data only.
        (vec!["random"], vec![])
    } else {
        (args.pattern.names(), args.medium.names())
    };
    let dd = crate::tools::which("dd");
    let qemu_img = crate::tools::which("qemu-img");
    let temp;
    let work = match &args.workdir {
        Some(d) => {
            crate::demo::claim_workdir(d, "bench")?;
            d.clone()
        }
        None => {
            temp = tempfile::Builder::new().prefix("mgear-bench-").tempdir()?;
            temp.path().to_owned()
        }
    };
    check_room(&work, size, args.scale.map(|(_, large)| large), args.repeat)?;
    let second = match (&args.volume_dir, args.appliance_only) {
        (Some(dir), false) => Some(second_device(dir, &work, size)?),
        _ => None,
    };
    let mut report = Report {
        command: "bench",
        repeat: args.repeat,
        patterns: Vec::new(),
        peak_rss_bytes: None,
        sim_peak_rss_bytes: None,
        notes: Vec::new(),
        targets: Vec::new(),
    };
    for pattern in patterns {
        let src = work.join(format!("source-{pattern}.raw"));
        if !args.json {
            eprintln!("generating {} of {pattern} data ...", human_bytes(size));
        }
        generate(&src, size, pattern)?;
        let key = work.join("bench.key");
        let _ = std::fs::remove_file(&key);
        let _ = std::fs::remove_file(crate::keyfile::pub_path(&key));
        crate::keys::keygen_quiet(&key)?;
        let mut timings = Vec::new();

        let mut dd_rate = None;
        let mut dd_cpu_per_gib = None;
        if dd.is_some() && !args.appliance_only {
            let out = work.join("dd.out");
            let (secs, dd_cpu) = best_of(args.repeat, || {
                dd_either(
                    DdFrom::Prefix(&src, size),
                    &out,
                    || drop_from_page_cache(&src),
                    |_| Ok(()),
                )
            })?;
            dd_rate = Some(crate::progress::mb_per_s(size, secs));
            dd_cpu_per_gib = Some(dd_cpu / gib(size));
            timings.push(Timing {
                what: "dd source -> medium (fsync)".into(),
                seconds: secs,
                mb_per_s: crate::progress::mb_per_s(size, secs),
                vs_dd: Some(1.0),
                baseline: None,
                cpu_seconds: Some(dd_cpu),
                cpu_s_per_gib: Some(dd_cpu / gib(size)),
                output_bytes: Some(size),
                cpu_share: None,
            });
        }
        // mgear's throughput over the baseline's: above 1.0 is faster than dd.
        let ratio = |base: Option<f64>, rate: f64| base.map(|b| ratio(rate, b));
        let per_gib = |cpu: f64| Some(cpu / (size as f64 / (1u64 << 30) as f64));

        for kind in &media {
            // Step names: the dir: medium keeps the historical names, the
            // FAT32 image's carry a "fat: " prefix.
            let prefix = if *kind == "fat" { "fat: " } else { "" };
            let medium_dir = work.join("medium");
            let medium_img = work.join("medium.img");
            // Each run onto a fresh medium; the last one's is ingested.
            let mut last = None;
            // Each capture run follows a run of its `dd` baseline, and each row keeps its best:
            // the virtual disk has slow spells of seconds, and with every `dd` run first and
            // every capture after, the ratio measured the spells (x0.62 and x0.80 in two runs
            // of one hour, the captures unchanged).
            let mut dd_best = (f64::INFINITY, f64::INFINITY);
            let (secs, capture_cpu) = best_of(args.repeat, || {
                if dd_rate.is_some() {
                    let (s, c) = dd_either(
                        DdFrom::Prefix(&src, size),
                        &work.join("dd.out"),
                        || drop_from_page_cache(&src),
                        |_| Ok(()),
                    )?;
                    dd_best = (dd_best.0.min(s), dd_best.1.min(c));
                }
                let m = last.insert(fresh_medium(&work, kind, size)?);
                // Capture reads the source with O_DIRECT, from the disk: so does its dd.
                drop_from_page_cache(&src)?;
                capture_timed(&src, m, &key, &work, None, args.threads)
            })?;
            if let Some(row) = timings
                .iter_mut()
                .find(|t| t.what == "dd source -> medium (fsync)")
                .filter(|t| dd_best.0 < t.seconds || dd_best.1 < t.cpu_seconds.unwrap_or(0.0))
            {
                row.seconds = row.seconds.min(dd_best.0);
                row.mb_per_s = crate::progress::mb_per_s(size, row.seconds);
                let cpu = row.cpu_seconds.unwrap_or(f64::INFINITY).min(dd_best.1);
                row.cpu_seconds = Some(cpu);
                row.cpu_s_per_gib = Some(cpu / gib(size));
                dd_rate = Some(row.mb_per_s);
                dd_cpu_per_gib = Some(cpu / gib(size));
            }
            let medium = last.ok_or_else(|| crate::err!("the capture ran no time"))?;
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
                baseline: None,
                cpu_seconds: Some(capture_cpu),
                cpu_s_per_gib: per_gib(capture_cpu),
                output_bytes: Some(medium_bytes),
                cpu_share: None,
            });

            let rows = IngestRows {
                kind,
                prefix,
                pattern,
                medium: &medium,
                medium_bytes,
                medium_img: &medium_img,
                medium_dir: &medium_dir,
                key: &key,
                work: &work,
                size,
                repeat: args.repeat,
                dd: dd.is_some(),
            };
            timings.extend(rows.run(&work, "")?);
            if let Some((dir, tmpfs)) = &second {
                // A tmpfs keeps the copy in memory: no disk under the volume, its fsync a
                // no-op, ingest's read-back a read of memory. Shown, never judged.
                let label = if *tmpfs {
                    " -> 2nd device (tmpfs)"
                } else {
                    " -> 2nd device"
                };
                timings.extend(rows.run(dir.path(), label)?);
            }
            if let (Some(pool), "dir") = (&args.rbd, *kind) {
                timings.extend(rbd_rows(pool, &src, &medium, &key, &work, size)?);
            }
            let _ = std::fs::remove_dir_all(&medium_dir);
            let _ = std::fs::remove_file(&medium_img);
        }

        if pattern == "random" && (media.contains(&"fat") || args.appliance_only) {
            let fat_rate = timings
                .iter()
                .find(|t| t.what == "fat: mgear capture")
                .map(|t| t.mb_per_s);
            let extra = Extra {
                work: &work,
                key: &key,
                threads: args.threads,
                repeat: args.repeat,
                dd_cpu_per_gib,
                json: args.json,
            };
            if !args.appliance_only {
                timings.extend(extra.rate_limited(size)?);
                timings.extend(extra.set(size)?);
                if let Some((small, large)) = args.scale {
                    timings.extend(extra.scale(small, large)?);
                }
            }
            if !args.no_appliance {
                match sim_binary() {
                    Some(sim) => {
                        let (rows, rss) = extra.appliance(&sim, &src, size, fat_rate)?;
                        timings.extend(rows);
                        report.sim_peak_rss_bytes = rss;
                    }
                    None => report.notes.push(
                        "mgear-appliance-sim not found next to mgear or on PATH (cargo build --release -p mgear-appliance-sim): no appliance rows".into(),
                    ),
                }
            }
        }

        if qemu_img.is_some() && !args.appliance_only {
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
                baseline: None,
                cpu_seconds: None,
                cpu_s_per_gib: None,
                output_bytes: bytes,
                cpu_share: None,
            });
        }
        // The rows against the source's `dd` say their ratio to its best run, which a later
        // medium's turns may have lowered after an earlier row was measured.
        if let Some(dd) = timings
            .iter()
            .find(|t| t.what == "dd source -> medium (fsync)")
            .map(|t| t.mb_per_s)
        {
            for t in timings.iter_mut().filter(|t| {
                t.what.ends_with("mgear capture") || t.what.starts_with("qemu-img convert")
            }) {
                t.vs_dd = ratio(Some(dd), t.mb_per_s);
            }
        }
        std::fs::remove_file(&src)?;
        report.patterns.push(PatternReport {
            pattern: pattern.into(),
            size,
            timings,
        });
    }
    report.peak_rss_bytes =
        peak_rss().map(|own| own.max(PEAK_STEP_RSS.load(std::sync::atomic::Ordering::Relaxed)));
    report.targets = targets(&report);
    if args.json {
        crate::progress::print_json(&report)?;
        return Ok(crate::exit::OK);
    }
    if args.repeat > 1 {
        println!(
            "capture, ingest, their dd baselines, the rate-limited and the appliance capture: best of {} runs",
            args.repeat
        );
    }
    for p in &report.patterns {
        println!("pattern {} ({}):", p.pattern, human_bytes(p.size));
        for t in &p.timings {
            println!(
                "  {:<52} {:>8.1} MB/s {:>7.2} s{}{}{}{}{}",
                t.what,
                t.mb_per_s,
                t.seconds,
                t.vs_dd.map_or(String::new(), |v| format!(
                    "  x{v:.2} vs {}",
                    t.baseline.as_deref().unwrap_or("dd")
                )),
                t.cpu_seconds
                    .map_or(String::new(), |c| format!("  cpu {c:.2} s")),
                t.cpu_s_per_gib
                    .map_or(String::new(), |c| format!(" ({c:.2} CPU-s/GiB)")),
                t.output_bytes
                    .map_or(String::new(), |b| format!("  output {}", human_bytes(b))),
                t.cpu_share.map_or(String::new(), |c| format!(
                    "  {:.1}% of the machine",
                    c * 100.0
                ))
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
    if let Some(r) = report.sim_peak_rss_bytes {
        println!("peak RSS of mgear-appliance-sim: {}", human_bytes(r));
    }
    for n in &report.notes {
        println!("note: {n}");
    }
    println!("targets:");
    for t in &report.targets {
        println!(
            "  {:<60} wanted {:<12} measured {:<12} {}",
            t.what,
            t.wanted,
            t.measured,
            if t.met { "met" } else { "NOT met" }
        );
    }
    Ok(crate::exit::OK)
}

/// What the ingest rows of one medium need: the capture to ingest and where it lies.
struct IngestRows<'a> {
    /// `fat` or `dir`.
    kind: &'a str,
    /// Step-name prefix of the medium (`fat: ` or none).
    prefix: &'a str,
    pattern: &'a str,
    medium: &'a Where,
    /// Bytes the capture stored (what `dd` copies).
    medium_bytes: u64,
    medium_img: &'a Path,
    medium_dir: &'a Path,
    key: &'a Path,
    work: &'a Path,
    /// Source disk bytes (what ingest writes).
    size: u64,
    repeat: usize,
    /// `dd` is on PATH.
    dd: bool,
}

impl IngestRows<'_> {
    /// `dd` of the medium's capture files into `dir` (the baseline) and `mgear ingest` into a
    /// raw file in `dir`, both reading a medium dropped from the page cache, best of the
    /// runs each; `label` names `dir` in the step names (empty for the work directory).
    /// In the work directory each `dd` is also followed by a direct read of its copy, a row of
    /// its own ([`THREE_PASS_DD`]): the passes ingest makes over one disk.
    fn run(&self, dir: &Path, label: &str) -> crate::Result<Vec<Timing>> {
        let (kind, prefix, pattern) = (self.kind, self.prefix, self.pattern);
        let mut timings = Vec::new();
        // The dd copy followed by a direct read of what it wrote, on the work
        // directory's disk: the three passes of an ingest (read, write, read back).
        let mut checked_secs = f64::INFINITY;
        let read_back = label.is_empty();
        // For an all-zero source the medium holds almost nothing: a dd of
        // it is no baseline for ingest, which writes (sparsely) the whole disk.
        let dd_on = self.dd && !matches!(pattern, "zeros" | "sparse");
        let out = dir.join("dd-medium.out");
        let mut files = Vec::new();
        files_under(&self.medium_dir.join("MGEAR"), &mut files);
        let from = if kind == "fat" {
            // As many bytes of the image as the capture stored.
            DdFrom::Prefix(self.medium_img, self.medium_bytes)
        } else {
            DdFrom::Files(&files)
        };
        // Each ingest run follows a run of its `dd` baseline, each row keeping its best (as
        // for capture: the disk's slow spells fell on whichever row ran during them).
        let mut dd_best = (f64::INFINITY, f64::INFINITY);
        let vol = dir.join("vol.raw");
        let (secs, ingest_cpu) = best_of(self.repeat, || {
            if dd_on {
                let (s, c) = dd_either(
                    from,
                    &out,
                    || medium_cold(kind, self.medium_img, self.medium_dir),
                    |secs| {
                        if read_back {
                            let back = dd_read_direct(&out)?;
                            checked_secs = checked_secs.min(secs + back);
                        }
                        Ok(())
                    },
                )?;
                dd_best = (dd_best.0.min(s), dd_best.1.min(c));
            }
            // A fresh start each run: a finished one's state would make
            // the next one a no-op.
            let state = self.work.join("ingest-state");
            let _ = std::fs::remove_dir_all(&state);
            let _ = std::fs::remove_file(&vol);
            medium_cold(kind, self.medium_img, self.medium_dir)?;
            ingest_timed(
                self.medium,
                self.key,
                &format!("file:{}", vol.display()),
                &state,
                false,
                self.work,
            )
        })?;
        std::fs::remove_file(&vol)?;
        let mut dd_medium_rate = None;
        if dd_on {
            let (secs, dd_cpu) = dd_best;
            let rate = crate::progress::mb_per_s(self.medium_bytes, secs);
            dd_medium_rate = Some(rate);
            timings.push(Timing {
                what: format!(
                    "{prefix}dd medium files{} (fsync)",
                    if label.is_empty() {
                        " -> target"
                    } else {
                        label
                    }
                ),
                seconds: secs,
                mb_per_s: rate,
                vs_dd: Some(1.0),
                baseline: None,
                cpu_seconds: Some(dd_cpu),
                cpu_s_per_gib: Some(dd_cpu / gib(self.medium_bytes)),
                output_bytes: Some(self.medium_bytes),
                cpu_share: None,
            });
            if checked_secs.is_finite() {
                // The passes ingest makes on one disk: read the medium, write, read back.
                timings.push(Timing {
                    what: format!("{prefix}{THREE_PASS_DD}"),
                    seconds: checked_secs,
                    mb_per_s: crate::progress::mb_per_s(self.medium_bytes, checked_secs),
                    vs_dd: None,
                    baseline: None,
                    cpu_seconds: None,
                    cpu_s_per_gib: None,
                    output_bytes: Some(self.medium_bytes),
                    cpu_share: None,
                });
            }
        }
        let rate = crate::progress::mb_per_s(self.size, secs);
        timings.push(Timing {
            what: format!("{prefix}mgear ingest{label} (verifies, reads back)"),
            seconds: secs,
            mb_per_s: rate,
            vs_dd: dd_medium_rate.map(|b| ratio(rate, b)),
            baseline: None,
            cpu_seconds: Some(ingest_cpu),
            cpu_s_per_gib: Some(ingest_cpu / gib(self.size)),
            output_bytes: None,
            cpu_share: None,
        });
        Ok(timings)
    }
}

/// The row a target judges for step `what`: an ingest into a second device given with
/// `--volume-dir` (not a tmpfs), the layout of a target site, where there is one; else the
/// step on the work directory's disk. With its label for the target line.
fn judged<'a>(
    find: &impl Fn(&str, &str) -> Option<&'a Timing>,
    pattern: &str,
    what: &str,
    label: &str,
) -> (Option<&'a Timing>, String) {
    if what.ends_with("ingest") {
        if let Some(t) = find(pattern, &format!("{what} -> 2nd device (verifies")) {
            return (Some(t), format!("{label} (volume on a 2nd device)"));
        }
        return (find(pattern, &format!("{what} (verifies")), label.into());
    }
    (find(pattern, what), label.into())
}

/// The step name of the one-disk `dd` baseline followed by a direct read of its copy.
const THREE_PASS_DD: &str = "dd medium files -> target, then a direct read of the copy";

/// `bytes` in GiB.
/// `rate` over `base` (1.0 = as fast as the baseline); 0 when the baseline
/// measured nothing.
fn ratio(rate: f64, base: f64) -> f64 {
    if base > 0.0 {
        rate / base
    } else {
        0.0
    }
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// CPU seconds (user + system) of this process's finished children: what
/// `dd`, `cat` and `qemu-img` cost, for the baselines' CPU.
fn children_cpu_seconds() -> f64 {
    use nix::sys::resource::{getrusage, UsageWho};
    getrusage(UsageWho::RUSAGE_CHILDREN).map_or(0.0, |u| {
        let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
        t(u.user_time()) + t(u.system_time())
    })
}

/// An empty medium of `kind` (`fat`: a FAT32 image with room for `size`
/// bytes of incompressible data; `dir`: a directory) under `work`, and a
/// fresh key cache.
fn fresh_medium(work: &Path, kind: &str, size: u64) -> crate::Result<Where> {
    let medium_dir = work.join("medium");
    let medium_img = work.join("medium.img");
    let _ = std::fs::remove_dir_all(&medium_dir);
    let _ = std::fs::remove_file(&medium_img);
    let _ = std::fs::remove_dir_all(work.join("keys"));
    Ok(if kind == "fat" {
        // Room for incompressible data plus records, index and FAT.
        crate::medium::format_fat(&medium_img, Some(fat_bytes(size)), true)?;
        Where::one(format!("fat:{}", medium_img.display()))
    } else {
        std::fs::create_dir_all(&medium_dir)?;
        Where::one(format!("dir:{}", medium_dir.display()))
    })
}

/// Size of a FAT32 image that holds a capture of `size` random bytes.
fn fat_bytes(size: u64) -> u64 {
    size + size / 8 + (64 << 20)
}

/// `mgear capture` of `src` onto `medium`, as a child process: wall and CPU seconds.
fn capture_timed(
    src: &Path,
    medium: &Where,
    key: &Path,
    work: &Path,
    rate_limit: Option<&str>,
    threads: Option<usize>,
) -> crate::Result<(f64, f64)> {
    capture_disks_timed(
        std::slice::from_ref(&src.to_path_buf()),
        medium,
        key,
        work,
        rate_limit,
        threads,
        "bench",
    )
}

/// `mgear capture` of the disks `srcs` onto `medium` (several: one machine
/// set), as a child process: wall and CPU seconds.
fn capture_disks_timed(
    srcs: &[PathBuf],
    medium: &Where,
    key: &Path,
    work: &Path,
    rate_limit: Option<&str>,
    threads: Option<usize>,
    name: &str,
) -> crate::Result<(f64, f64)> {
    let mut args: Vec<std::ffi::OsString> = vec!["capture".into()];
    for s in srcs {
        args.push("--source".into());
        args.push(s.into());
    }
    args.extend(medium_args(medium));
    args.extend(["--name".into(), name.into(), "--recipient".into()]);
    args.push(crate::keyfile::pub_path(key).into());
    args.push("--key-cache".into());
    args.push(work.join("keys").into());
    args.push("--json".into());
    if let Some(r) = rate_limit {
        args.extend(["--rate-limit".into(), r.into()]);
    }
    if let Some(t) = threads {
        args.extend(["--threads".into(), t.to_string().into()]);
    }
    mgear_step(&args, work)
}

/// `--scale SMALL,LARGE`, or `None` for `off`.
/// Parse `--scale SMALL,LARGE` (or `off`).
pub fn scale_sizes(text: &str) -> crate::Result<Option<(u64, u64)>> {
    if text == "off" {
        return Ok(None);
    }
    let bad = || {
        crate::exit::usage(format!(
            "--scale {text}: give two sizes, SMALL,LARGE (e.g. 256MiB,4GiB), or off"
        ))
    };
    let (a, b) = text.split_once(',').ok_or_else(bad)?;
    let (a, b) = (parse_size(a.trim())?, parse_size(b.trim())?);
    if a < (1 << 20) || b <= a {
        return Err(bad());
    }
    Ok(Some((a, b)))
}

/// `mgear-appliance-sim` next to this executable (a cargo build puts both
/// in the same target directory), else on PATH.
fn sim_binary() -> Option<PathBuf> {
    const SIM: &str = "mgear-appliance-sim";
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join(SIM)))
        .filter(|p| p.is_file())
        .or_else(|| crate::tools::which(SIM))
}

/// CPU seconds (user + system) and peak RSS of a running process, from /proc.
fn proc_usage(pid: u32) -> (f64, Option<u64>) {
    let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the command name (which may hold spaces), which ends at the last ')'.
            let rest = s.get(s.rfind(')')? + 2..)?.to_string();
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
            // /proc counts in USER_HZ, which Linux fixes at 100 for user space.
            Some(ticks as f64 / 100.0)
        })
        .unwrap_or(0.0);
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmHWM:"))?.to_string();
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        });
    (cpu, rss)
}

/// The rows measured on random data only: a rate-limited capture, the
/// per-byte cost at two sizes, and the appliance simulator.
struct Extra<'a> {
    work: &'a Path,
    key: &'a Path,
    threads: Option<usize>,
    /// Runs of the rate-limited capture, of the capture through the
    /// simulator and of its baseline (the least time and CPU count).
    repeat: usize,
    /// `dd`'s CPU seconds per GiB copying the source, this run.
    dd_cpu_per_gib: Option<f64>,
    json: bool,
}

/// Disks of the machine set in the set rows.
const SET_DISKS: usize = 2;

/// The rate of the rate-limited capture, in bytes per second and as given.
const LIMIT: (f64, &str) = (50.0 * 1024.0 * 1024.0, "50MiB/s");

impl Extra<'_> {
    fn say(&self, what: &str) {
        if !self.json {
            eprintln!("{what} ...");
        }
    }

    /// A capture held to 50 MiB/s, the way a production source is captured:
    /// its CPU time over its wall time over the cores is its share of the
    /// machine; the baseline is `dd`'s CPU per byte of this run at the same rate.
    fn rate_limited(&self, size: u64) -> crate::Result<Vec<Timing>> {
        let n = size.min(256 << 20);
        self.say(&format!(
            "capture of {} held to {}",
            human_bytes(n),
            LIMIT.1
        ));
        let src = self.work.join("source-rate.raw");
        generate(&src, n, "random")?;
        // Least CPU of `--repeat` runs, as for the other captures: a single
        // run read 3.5 % once and 6.1 % the next on this shared VM.
        let (secs, cpu) = best_of(self.repeat, || {
            let medium = fresh_medium(self.work, "fat", n)?;
            capture_timed(
                &src,
                &medium,
                self.key,
                self.work,
                Some(LIMIT.1),
                self.threads,
            )
        })?;
        std::fs::remove_file(&src)?;
        let cores = std::thread::available_parallelism().map_or(1, |c| c.get()) as f64;
        let share = cpu / secs / cores;
        let mut rows = vec![Timing {
            what: format!("fat: mgear capture --rate-limit {}", LIMIT.1),
            seconds: secs,
            mb_per_s: crate::progress::mb_per_s(n, secs),
            vs_dd: None,
            baseline: None,
            cpu_seconds: Some(cpu),
            cpu_s_per_gib: Some(cpu / gib(n)),
            output_bytes: None,
            cpu_share: Some(share),
        }];
        if let Some(dd) = self.dd_cpu_per_gib {
            // dd's CPU per byte at the same byte rate.
            let dd_share = dd * gib(LIMIT.0 as u64) / cores;
            rows.push(Timing {
                what: format!("dd of the same bytes at {} (computed)", LIMIT.1),
                seconds: secs,
                mb_per_s: crate::progress::mb_per_s(n, secs),
                vs_dd: None,
                baseline: None,
                cpu_seconds: Some(dd * gib(n)),
                cpu_s_per_gib: Some(dd),
                output_bytes: None,
                cpu_share: Some(dd_share),
            });
        }
        Ok(rows)
    }

    /// Random captures of `small` and `large` bytes onto a FAT32 image, each
    /// against `dd` of its own source: the per-byte cost must not grow with size.
    fn scale(&self, small: u64, large: u64) -> crate::Result<Vec<Timing>> {
        let mut rows = Vec::new();
        for n in [small, large] {
            self.say(&format!("capture of {} for the scale rows", human_bytes(n)));
            let src = self.work.join("source-scale.raw");
            generate(&src, n, "random")?;
            let out = self.work.join("dd.out");
            let (dd_secs, dd_cpu) = dd_either(
                DdFrom::Prefix(&src, n),
                &out,
                || drop_from_page_cache(&src),
                |_| Ok(()),
            )?;
            let medium = fresh_medium(self.work, "fat", n)?;
            let (secs, cpu) = {
                drop_from_page_cache(&src)?;
                capture_timed(&src, &medium, self.key, self.work, None, self.threads)?
            };
            std::fs::remove_file(&src)?;
            let _ = std::fs::remove_file(self.work.join("medium.img"));
            let label = human_bytes(n);
            rows.push(Timing {
                what: format!("scale: dd {label} -> medium (fsync)"),
                seconds: dd_secs,
                mb_per_s: crate::progress::mb_per_s(n, dd_secs),
                vs_dd: Some(1.0),
                baseline: None,
                cpu_seconds: Some(dd_cpu),
                cpu_s_per_gib: Some(dd_cpu / gib(n)),
                output_bytes: None,
                cpu_share: None,
            });
            let rate = crate::progress::mb_per_s(n, secs);
            let dd_rate = crate::progress::mb_per_s(n, dd_secs);
            rows.push(Timing {
                what: format!("scale: fat: mgear capture {label}"),
                seconds: secs,
                mb_per_s: rate,
                vs_dd: Some(ratio(rate, dd_rate)),
                baseline: None,
                cpu_seconds: Some(cpu),
                cpu_s_per_gib: Some(cpu / gib(n)),
                output_bytes: None,
                cpu_share: None,
            });
        }
        Ok(rows)
    }

    /// One disk of `n` bytes, then a machine set of [`SET_DISKS`] disks of
    /// `n / SET_DISKS` bytes each, onto FAT images: a set must capture at
    /// the throughput per byte of one disk (its `x` is against the one disk).
    fn set(&self, size: u64) -> crate::Result<Vec<Timing>> {
        // At the run's size (up to 1 GiB), as the main capture: a set starts each disk
        // (its checks before writing, the key cache entry, a second COMMIT) in about 0.06 s
        // here, which at 256 MiB (the size until session 26) weighed 15 % of the set's time
        // and made a per-byte comparison of fixed costs.
        let n = size.min(1 << 30);
        let part = (n / SET_DISKS as u64) & !((1 << 20) - 1);
        self.say(&format!(
            "capture of one disk of {} and of a set of {SET_DISKS} disks of {}",
            human_bytes(n),
            human_bytes(part)
        ));
        // Best of `--repeat` runs each, every run from sources read from the
        // disk: one run each (until session 26) put this row's noise into the target.
        let one = self.work.join("source-one.raw");
        generate(&one, part * SET_DISKS as u64, "random")?;
        let (one_secs, one_cpu) = best_of(self.repeat, || {
            let medium = fresh_medium(self.work, "fat", n)?;
            drop_from_page_cache(&one)?;
            capture_timed(&one, &medium, self.key, self.work, None, self.threads)
        })?;
        std::fs::remove_file(&one)?;
        let disks: Vec<PathBuf> = (0..SET_DISKS)
            .map(|k| self.work.join(format!("source-set-{k}.raw")))
            .collect();
        for d in &disks {
            generate(d, part, "random")?;
        }
        let (set_secs, set_cpu) = best_of(self.repeat, || {
            let medium = fresh_medium(self.work, "fat", n)?;
            disks.iter().try_for_each(|d| drop_from_page_cache(d))?;
            capture_disks_timed(
                &disks,
                &medium,
                self.key,
                self.work,
                None,
                self.threads,
                "bench",
            )
        })?;
        for d in &disks {
            std::fs::remove_file(d)?;
        }
        let _ = std::fs::remove_file(self.work.join("medium.img"));
        let total = part * SET_DISKS as u64;
        let one_rate = crate::progress::mb_per_s(total, one_secs);
        let set_rate = crate::progress::mb_per_s(total, set_secs);
        Ok(vec![
            Timing {
                what: format!(
                    "set: fat: mgear capture of one disk of {}",
                    human_bytes(total)
                ),
                seconds: one_secs,
                mb_per_s: one_rate,
                vs_dd: None,
                baseline: None,
                cpu_seconds: Some(one_cpu),
                cpu_s_per_gib: Some(one_cpu / gib(total)),
                output_bytes: None,
                cpu_share: None,
            },
            Timing {
                what: format!(
                    "set: fat: mgear capture of a set of {SET_DISKS} disks of {}",
                    human_bytes(part)
                ),
                seconds: set_secs,
                mb_per_s: set_rate,
                vs_dd: Some(ratio(set_rate, one_rate)),
                baseline: Some("set: fat: mgear capture of one disk".into()),
                cpu_seconds: Some(set_cpu),
                cpu_s_per_gib: Some(set_cpu / gib(total)),
                output_bytes: None,
                cpu_share: None,
            },
        ])
    }

    /// Capture of `src` through `mgear-appliance-sim`'s NBD export (against
    /// the direct `fat:` capture of this run, `fat_rate`, or one made here
    /// when there is none), then its seal (keyless verify and region
    /// hashes) against `dd` reading the medium image, both from a cold page
    /// cache. Returns the rows and the simulator's peak RSS.
    fn appliance(
        &self,
        sim: &Path,
        src: &Path,
        size: u64,
        fat_rate: Option<f64>,
    ) -> crate::Result<(Vec<Timing>, Option<u64>)> {
        let dir = self.work.join("appliance");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let mut rows = Vec::new();
        self.say("capture through mgear-appliance-sim (each run beside a direct fat: capture), then seal");
        let img = dir.join("medium.img");
        // Room for each run's capture (each under a name of its own).
        let room = fat_bytes(size).saturating_mul(self.repeat as u64);
        crate::medium::format_fat(&img, Some(room), true)?;
        let tty = dir.join("appliance.tty");
        let log = std::fs::File::create(dir.join("sim.log"))?;
        let child = Command::new(sim)
            .arg("--medium")
            .arg(&img)
            .arg("--state")
            .arg(dir.join("state"))
            .arg("--console-link")
            .arg(&tty)
            .arg("--nbd")
            .arg(dir.join("appliance.sock"))
            // Fast PIN hashing: the PIN is not what is measured here.
            .arg("--test-timing")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", sim.display()))?;
        let mut sim_proc = SimGuard(child);
        let result = self.appliance_steps(&mut sim_proc, &dir, &tty, &img, src, size, fat_rate);
        let rss = proc_usage(sim_proc.0.id()).1;
        drop(sim_proc);
        let _ = std::fs::remove_dir_all(&dir);
        rows.extend(result?);
        Ok((rows, rss))
    }

    #[allow(clippy::too_many_arguments)]
    fn appliance_steps(
        &self,
        sim: &mut SimGuard,
        dir: &Path,
        tty: &Path,
        img: &Path,
        src: &Path,
        size: u64,
        fat_rate: Option<f64>,
    ) -> crate::Result<Vec<Timing>> {
        let t0 = Instant::now();
        while std::fs::symlink_metadata(tty).is_err() {
            if let Some(st) = sim.0.try_wait()? {
                crate::bail!(
                    "mgear-appliance-sim exited at start ({st}): see {}",
                    dir.join("sim.log").display()
                );
            }
            if t0.elapsed().as_secs() > 30 {
                crate::bail!("mgear-appliance-sim did not come up within 30 s");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let exe = std::env::current_exe()?;
        let pin = dir.join("pin");
        std::fs::write(&pin, "4711-2468\n")?;
        for step in ["provision", "unlock"] {
            crate::tools::run(
                Command::new(&exe)
                    .arg("appliance")
                    .arg("--port")
                    .arg(tty)
                    .args([step, "--pin-file"])
                    .arg(&pin)
                    .stdout(std::process::Stdio::null()),
            )
            .with_context(|| format!("mgear appliance {step}"))?;
        }
        let medium = Where::appliance_at(tty.to_path_buf());
        let _ = std::fs::remove_dir_all(self.work.join("keys"));
        let mut run = 0;
        // Each run through the simulator follows a direct capture onto a FAT image, its
        // baseline, each keeping its best: with the baseline measured minutes earlier (the
        // main capture row), the ratio measured the disk's slow spells too (x0.62-x1.23).
        let direct = dir.join("direct.img");
        let mut direct_best = (f64::INFINITY, f64::INFINITY);
        let (secs, cpu) = best_of(self.repeat, || {
            run += 1;
            let _ = std::fs::remove_file(&direct);
            crate::medium::format_fat(&direct, Some(fat_bytes(size)), true)?;
            let (s, c) = capture_timed(
                src,
                &Where::one(format!("fat:{}", direct.display())),
                self.key,
                self.work,
                None,
                self.threads,
            )?;
            std::fs::remove_file(&direct)?;
            let _ = std::fs::remove_dir_all(self.work.join("keys"));
            direct_best = (direct_best.0.min(s), direct_best.1.min(c));
            // The simulator's CPU counts with the capture's.
            let sim_cpu = proc_usage(sim.0.id()).0;
            let (secs, cpu) = capture_disks_timed(
                std::slice::from_ref(&src.to_path_buf()),
                &medium,
                self.key,
                self.work,
                None,
                self.threads,
                &format!("bench{run}"),
            )?;
            Ok((secs, cpu + proc_usage(sim.0.id()).0 - sim_cpu))
        })?;
        let beside = crate::progress::mb_per_s(size, direct_best.0);
        // The better of this run's baselines (the main capture row's, and the one beside).
        let fat_rate = fat_rate.map_or(beside, |r| r.max(beside));
        let rate = crate::progress::mb_per_s(size, secs);
        let mut rows = vec![Timing {
            what: "appliance baseline: fat: mgear capture (beside each run)".into(),
            seconds: direct_best.0,
            mb_per_s: beside,
            vs_dd: None,
            baseline: None,
            cpu_seconds: Some(direct_best.1),
            cpu_s_per_gib: Some(direct_best.1 / gib(size)),
            output_bytes: None,
            cpu_share: None,
        }];
        rows.push(Timing {
            what: "appliance: mgear capture (simulator's NBD export)".into(),
            seconds: secs,
            mb_per_s: rate,
            vs_dd: Some(ratio(rate, fat_rate)),
            baseline: Some("fat: capture".into()),
            cpu_seconds: Some(cpu),
            cpu_s_per_gib: Some(cpu / gib(size)),
            output_bytes: None,
            cpu_share: None,
        });
        let img_len = std::fs::metadata(img)?.len();
        drop_from_page_cache(img)?;
        let cpu = children_cpu_seconds();
        let read_secs = timed(|| {
            crate::tools::run(
                Command::new("dd")
                    .arg(format!("if={}", img.display()))
                    .args(["of=/dev/null", "bs=4M", "status=none"]),
            )
        })?;
        let read_cpu = children_cpu_seconds() - cpu;
        let read_rate = crate::progress::mb_per_s(img_len, read_secs);
        rows.push(Timing {
            what: "appliance: dd medium image -> /dev/null (cold)".into(),
            seconds: read_secs,
            mb_per_s: read_rate,
            vs_dd: Some(1.0),
            baseline: None,
            cpu_seconds: Some(read_cpu),
            cpu_s_per_gib: Some(read_cpu / gib(img_len)),
            output_bytes: None,
            cpu_share: None,
        });
        drop_from_page_cache(img)?;
        let sim_cpu = proc_usage(sim.0.id()).0;
        let seal_secs = timed(|| {
            crate::tools::run(
                Command::new(&exe)
                    .arg("appliance")
                    .arg("--port")
                    .arg(tty)
                    .args(["--json", "seal"])
                    .stdout(std::process::Stdio::null()),
            )
            .context("mgear appliance seal")
        })?;
        let sim_cpu = proc_usage(sim.0.id()).0 - sim_cpu;
        let seal_rate = crate::progress::mb_per_s(img_len, seal_secs);
        rows.push(Timing {
            what: "appliance: seal (verify + region hashes, cold)".into(),
            seconds: seal_secs,
            mb_per_s: seal_rate,
            vs_dd: Some(ratio(seal_rate, read_rate)),
            baseline: Some("dd read of the medium".into()),
            cpu_seconds: Some(sim_cpu),
            cpu_s_per_gib: Some(sim_cpu / gib(img_len)),
            output_bytes: None,
            cpu_share: None,
        });
        Ok(rows)
    }
}

/// Write `path`'s dirty pages and drop all its pages from the page cache,
/// so that the next reader reads the disk: the medium's baseline read and
/// the seal start alike, from the device, as on a medium that arrives.
fn drop_from_page_cache(path: &Path) -> crate::Result<()> {
    use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // Dirty pages are not dropped: write them first.
    f.sync_all()
        .with_context(|| format!("syncing {}", path.display()))?;
    posix_fadvise(&f, 0, 0, PosixFadviseAdvice::POSIX_FADV_DONTNEED)
        .with_context(|| format!("dropping {} from the page cache", path.display()))?;
    Ok(())
}

/// Drops the medium of a `kind` (`fat`/`dir`) row from the page cache
/// before each ingest and each `dd` of it, so that both read it from the
/// disk, as a medium that arrives is read. Without it the first `dd` run
/// read the disk and left the medium cached for the later `dd` runs and
/// every ingest run, so the rows depended on their order.
fn medium_cold(kind: &str, image: &Path, dir: &Path) -> crate::Result<()> {
    if kind == "fat" {
        return drop_from_page_cache(image);
    }
    let mut files = Vec::new();
    files_under(dir, &mut files);
    files.iter().try_for_each(|f| drop_from_page_cache(f))
}

/// The running simulator: stopped (SIGTERM, then waited for) when dropped.
struct SimGuard(std::process::Child);

impl Drop for SimGuard {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let _ = self.0.wait();
    }
}

/// The RBD row: `mgear ingest` into a new image of `pool` against `qemu-img convert` of the
/// raw source into another (both created by the step, `-W -m 16` as the cloud lab measured
/// qemu-img at its best), on the same cluster, in this run. Both images are removed. The CPU
/// of each is the client side's (ingest: this process, librbd's threads included; convert: the
/// `qemu-img`), not the cluster's.
fn rbd_rows(
    pool: &str,
    src: &Path,
    medium: &Where,
    key: &Path,
    work: &Path,
    size: u64,
) -> crate::Result<Vec<Timing>> {
    let base = format!("mgear-bench-{}", std::process::id());
    let spec = |suffix: &str| -> crate::Result<mgear_volume::RbdSpec> {
        Ok(mgear_volume::RbdSpec::parse(&format!(
            "rbd:{pool}/{base}-{suffix}"
        ))?)
    };
    let (ours, bytes, theirs) = (spec("ingest")?, spec("sha")?, spec("convert")?);
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
    // One ingest into `spec`: wall seconds, the process's CPU seconds and the
    // CPU seconds of this machine's OSDs (the cloud lab's; 0 for a remote cluster).
    let ingest_into = |spec: &mgear_volume::RbdSpec, volume_sha256: bool, state: &str| {
        let osd = osd_cpu_seconds();
        let step = ingest_timed(
            medium,
            key,
            &spec.to_string(),
            &work.join(state),
            volume_sha256,
            work,
        );
        remove(spec);
        step.map(|(secs, cpu)| (secs, cpu, osd_cpu_seconds() - osd))
    };
    let (ingest, ingest_cpu, ingest_osd) = ingest_into(&ours, false, "ingest-state-rbd")?;
    let (read, read_cpu, read_osd) = ingest_into(&bytes, true, "ingest-state-rbd-sha")?;
    // Convert reads its raw disk from the disk, as ingest reads its medium:
    // the capture left the source in the page cache.
    drop_from_page_cache(src)?;
    let (cpu, osd) = (children_cpu_seconds(), osd_cpu_seconds());
    let convert = timed(|| {
        crate::tools::run(
            Command::new("qemu-img")
                .args(["convert", "-W", "-m", "16", "-f", "raw", "-O", "raw"])
                .arg(src)
                .arg(theirs.qemu_filename()),
        )
    });
    let (convert_cpu, convert_osd) = (children_cpu_seconds() - cpu, osd_cpu_seconds() - osd);
    // What an operator who checks a convert does next: read the image back
    // against the source. Ingest always checks what it wrote; this is the
    // like-for-like baseline for that (not the target's).
    let (cpu, osd) = (children_cpu_seconds(), osd_cpu_seconds());
    let compare = match convert {
        Ok(_) => timed(|| {
            crate::tools::run(
                Command::new("qemu-img")
                    .args(["compare", "-f", "raw", "-F", "raw"])
                    .arg(src)
                    .arg(theirs.qemu_filename()),
            )
        }),
        Err(_) => Ok(0.0),
    };
    let (compare_cpu, compare_osd) = (children_cpu_seconds() - cpu, osd_cpu_seconds() - osd);
    remove(&theirs);
    let convert = convert?;
    let checked = convert + compare?;
    let (ingest_rate, convert_rate) = (
        crate::progress::mb_per_s(size, ingest),
        crate::progress::mb_per_s(size, convert),
    );
    let osd = |cpu: f64| match cpu > 0.0 {
        true => format!(", OSDs here {cpu:.2} CPU-s"),
        false => String::new(),
    };
    Ok(vec![
        Timing {
            what: format!("rbd: qemu-img convert -W -m 16 -> rbd{}", osd(convert_osd)),
            seconds: convert,
            mb_per_s: convert_rate,
            vs_dd: None,
            baseline: None,
            cpu_seconds: Some(convert_cpu),
            cpu_s_per_gib: Some(convert_cpu / gib(size)),
            output_bytes: None,
            cpu_share: None,
        },
        Timing {
            what: format!(
                "rbd: qemu-img convert, then qemu-img compare{}",
                osd(convert_osd + compare_osd)
            ),
            seconds: checked,
            mb_per_s: crate::progress::mb_per_s(size, checked),
            vs_dd: Some(ratio(
                crate::progress::mb_per_s(size, checked),
                convert_rate,
            )),
            baseline: Some("convert".into()),
            cpu_seconds: Some(convert_cpu + compare_cpu),
            cpu_s_per_gib: Some((convert_cpu + compare_cpu) / gib(size)),
            output_bytes: None,
            cpu_share: None,
        },
        Timing {
            what: format!(
                "rbd: mgear ingest -> rbd (verifies, digests on the OSDs{})",
                osd(ingest_osd)
            ),
            seconds: ingest,
            mb_per_s: ingest_rate,
            // Here the baseline is qemu-img convert into the same pool, not dd.
            vs_dd: Some(ratio(ingest_rate, convert_rate)),
            baseline: Some("convert".into()),
            cpu_seconds: Some(ingest_cpu),
            cpu_s_per_gib: Some(ingest_cpu / gib(size)),
            output_bytes: None,
            cpu_share: None,
        },
        Timing {
            what: format!(
                "rbd: mgear ingest --volume-sha256 (reads every byte back{})",
                osd(read_osd)
            ),
            seconds: read,
            mb_per_s: crate::progress::mb_per_s(size, read),
            vs_dd: Some(ratio(crate::progress::mb_per_s(size, read), convert_rate)),
            baseline: Some("convert".into()),
            cpu_seconds: Some(read_cpu),
            cpu_s_per_gib: Some(read_cpu / gib(size)),
            output_bytes: None,
            cpu_share: None,
        },
    ])
}

/// `mgear ingest` of the benchmark's capture into `target`, as a child
/// process: untrusted (a benchmark measures speed, not origin), unsealed,
/// resume state in `state_dir`: wall and CPU seconds.
fn ingest_timed(
    medium: &Where,
    key: &Path,
    target: &str,
    state_dir: &Path,
    volume_sha256: bool,
    work: &Path,
) -> crate::Result<(f64, f64)> {
    let mut args: Vec<std::ffi::OsString> = vec!["ingest".into()];
    args.extend(medium_args(medium));
    args.extend(["--name".into(), "bench".into(), "--identity".into()]);
    args.push(key.into());
    args.extend(["--target".into(), target.into(), "--state-dir".into()]);
    args.push(state_dir.into());
    for flag in ["--force", "--allow-unsealed", "--allow-untrusted", "--json"] {
        args.push(flag.into());
    }
    if volume_sha256 {
        args.push("--volume-sha256".into());
    }
    mgear_step(&args, work)
}

/// CPU seconds of this machine's `ceph-osd` processes so far (from /proc; 0
/// when none runs here).
fn osd_cpu_seconds() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter(|e| {
            std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == "ceph-osd")
        })
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .map(|pid| proc_usage(pid).0)
        .sum()
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
            let (row, label) = judged(&find, pattern, what, label);
            if let Some(v) = row.and_then(|t| t.vs_dd) {
                out.push(Target {
                    what: format!("{label} of {pattern} data vs dd"),
                    wanted: ">= x0.85".into(),
                    measured: format!("x{v:.2}"),
                    met: v >= 0.85,
                });
            }
        }
        // Ingest on one disk against dd making the same three passes (read the medium, write
        // the volume, read the copy back): the like-for-like baseline where they share a disk.
        for prefix in ["", "fat: "] {
            let ingest = find(pattern, &format!("{prefix}mgear ingest (verifies"));
            let dd = find(pattern, &format!("{prefix}{THREE_PASS_DD}"));
            if let (Some(i), Some(d)) = (ingest, dd) {
                let v = ratio(i.mb_per_s, d.mb_per_s);
                out.push(Target {
                    what: format!(
                        "{prefix}ingest of {pattern} data vs dd + a read of its copy, one disk"
                    ),
                    wanted: ">= x0.85".into(),
                    measured: format!("x{v:.2}"),
                    met: v >= 0.85,
                });
            }
        }
    }
    for (what, label, max) in [
        ("mgear capture", "capture", 1.5),
        ("fat: mgear capture", "fat: capture", 1.5),
        ("mgear ingest", "ingest", 1.0),
        ("fat: mgear ingest", "fat: ingest", 1.0),
    ] {
        let (row, label) = judged(&find, "random", what, label);
        if let Some(c) = row.and_then(|t| t.cpu_s_per_gib) {
            out.push(Target {
                what: format!("{label} CPU of random data"),
                wanted: format!("<= {max:.1} CPU-s/GiB"),
                measured: format!("{c:.2} CPU-s/GiB"),
                met: c <= max,
            });
        }
    }
    if let Some(share) = find("random", "fat: mgear capture --rate-limit").and_then(|t| t.cpu_share)
    {
        out.push(Target {
            what: format!("capture held to {}: share of the machine", LIMIT.1),
            wanted: "<= 5%".into(),
            measured: format!("{:.1}%", share * 100.0),
            met: share <= 0.05,
        });
    }
    let scale: Vec<&Timing> = report
        .patterns
        .iter()
        .filter(|p| p.pattern == "random")
        .flat_map(|p| p.timings.iter())
        .filter(|t| t.what.starts_with("scale: fat: mgear capture"))
        .collect();
    if let [small, large] = scale[..] {
        if let (Some(a), Some(b)) = (small.cpu_s_per_gib, large.cpu_s_per_gib) {
            let r = ratio(b, a);
            out.push(Target {
                what: "CPU per byte, large capture over small".into(),
                wanted: "<= x1.30".into(),
                measured: format!("x{r:.2}"),
                met: r <= 1.3,
            });
        }
    }
    if let Some(v) = find("random", "set: fat: mgear capture of a set").and_then(|t| t.vs_dd) {
        out.push(Target {
            what: format!("a set of {SET_DISKS} disks vs one disk of the same bytes, per byte"),
            wanted: ">= x0.90".into(),
            measured: format!("x{v:.2}"),
            met: v >= 0.9,
        });
    }
    for (what, label, min) in [
        (
            "appliance: mgear capture",
            "capture through the simulator vs fat:",
            0.8,
        ),
        ("appliance: seal", "seal vs a read of the medium", 0.5),
    ] {
        if let Some(v) = find("random", what).and_then(|t| t.vs_dd) {
            out.push(Target {
                what: label.into(),
                wanted: format!(">= x{min:.2}"),
                measured: format!("x{v:.2}"),
                met: v >= min,
            });
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A step's peak RSS and exit status are its own, from its rusage.
    #[test]
    fn a_child_is_reaped_with_its_own_usage() {
        let child = Command::new("dd")
            .args([
                "if=/dev/zero",
                "of=/dev/null",
                "bs=48M",
                "count=1",
                "status=none",
            ])
            .spawn()
            .unwrap();
        let (status, usage) = wait_with_usage(child).unwrap();
        assert!(status.success());
        // dd's one 48 MiB buffer, touched; ru_maxrss is in KiB. (No upper
        // bound: Linux counts the spawning process's RSS at exec too.)
        assert!(usage.ru_maxrss >= 48 << 10, "{}", usage.ru_maxrss);
        let t = Instant::now();
        let child = Command::new("sh")
            .args(["-c", "sleep 0.3; exit 3"])
            .spawn()
            .unwrap();
        let (status, usage) = wait_with_usage(child).unwrap();
        assert_eq!(status.code(), Some(3));
        assert!(t.elapsed().as_secs_f64() >= 0.3, "waited for it");
        assert!(usage.ru_utime.tv_sec < 1, "its own CPU, not ours");
    }

    #[test]
    fn a_run_that_cannot_fit_is_refused_before_it_starts() {
        let dir = tempfile::tempdir().unwrap();
        check_room(dir.path(), 1 << 20, Some(2 << 20), 3).unwrap();
        // More than any file system here holds: 4 x 1 PiB.
        let e = check_room(dir.path(), 1 << 50, None, 1)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("needs about 4096.00 TiB") && e.contains("--workdir"),
            "{e}"
        );
        // The scale capture's share counts too.
        let e = check_room(dir.path(), 1 << 20, Some(1 << 50), 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("a scale capture of 1024.00 TiB"), "{e}");
    }

    /// `--volume-dir` must be another file system than the work directory's, with room;
    /// a tmpfs is accepted and said to be one (its rows are never judged).
    #[test]
    fn the_volume_dir_must_be_another_file_system() {
        let work = tempfile::tempdir().unwrap();
        let same = work.path().join("vols");
        std::fs::create_dir(&same).unwrap();
        let e = second_device(&same, work.path(), 1 << 20).unwrap_err();
        assert_eq!(crate::exit::classified(&e), Some(crate::exit::USAGE));
        assert!(
            e.to_string()
                .contains("is on the same file system as the work directory"),
            "{e}"
        );
        let e = second_device(&work.path().join("nope"), work.path(), 1 << 20).unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
        // /dev/shm is a tmpfs here, another file system than the work directory's.
        let shm = Path::new("/dev/shm");
        if shm.is_dir() && std::fs::metadata(shm).is_ok() {
            let (dir, tmpfs) = second_device(shm, work.path(), 1 << 20).unwrap();
            assert!(dir.path().starts_with(shm) && tmpfs);
            let e = second_device(shm, work.path(), 1 << 50).unwrap_err();
            assert!(e.to_string().contains("free, the rows need"), "{e}");
        }
    }
}
