//! Check before writing: what `mgear capture` finds out about the source
//! and the medium before the first byte goes onto the medium.
//!
//! - a disk-image container (qcow2, VMDK, VHDX, VHD, VDI) given as a raw
//!   source is refused: its bytes are not the disk, and the capture would
//!   never boot. The message says how to export it raw with `qemu-nbd`;
//! - a source mounted read-write (the device, one of its partitions, or a
//!   loop device backed by the image file) is warned about: the capture
//!   may not match any moment of the disk;
//! - the stored size is estimated from evenly spaced samples (zero chunks
//!   cost nothing, others what zstd makes of them) and the time from
//!   `--rate-limit` or the read speed measured on the samples;
//! - the medium's free space is compared with that estimate: a capture
//!   that cannot fit is refused before anything is written.
//!
//! `capture --dry-run` prints this plan and writes nothing.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::exit::usage;
use crate::source::Source;
use crate::units::human_bytes;

/// A disk-image container format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Container {
    Qcow2,
    Vmdk,
    Vhdx,
    Vhd,
    Vdi,
}

impl Container {
    /// The name `qemu-nbd -f` / `qemu-img -f` knows it by.
    pub fn qemu_format(self) -> &'static str {
        match self {
            Container::Qcow2 => "qcow2",
            Container::Vmdk => "vmdk",
            Container::Vhdx => "vhdx",
            Container::Vhd => "vpc",
            Container::Vdi => "vdi",
        }
    }

    /// Human name.
    pub fn name(self) -> &'static str {
        match self {
            Container::Qcow2 => "qcow2",
            Container::Vmdk => "VMDK",
            Container::Vhdx => "VHDX",
            Container::Vhd => "VHD",
            Container::Vdi => "VDI",
        }
    }
}

/// Bytes of the head [`detect_container`] looks at.
pub const HEAD_LEN: usize = 4096;
/// Bytes of the tail (a VHD footer).
pub const TAIL_LEN: usize = 512;

/// The container `head` (first bytes) and `tail` (last 512 bytes) belong
/// to, by magic number; `None` for anything else (a raw disk).
pub fn detect_container(head: &[u8], tail: &[u8]) -> Option<Container> {
    let at = |b: &[u8], off: usize, magic: &[u8]| b.get(off..off + magic.len()) == Some(magic);
    if at(head, 0, b"QFI\xfb") {
        Some(Container::Qcow2)
    } else if at(head, 0, b"KDMV") || at(head, 0, b"COWD") || at(head, 0, b"# Disk DescriptorFile")
    {
        Some(Container::Vmdk)
    } else if at(head, 0, b"vhdxfile") {
        Some(Container::Vhdx)
    } else if at(head, 0x40, &0xbeda_107f_u32.to_le_bytes()) {
        Some(Container::Vdi)
    } else if at(head, 0, b"conectix") || at(tail, 0, b"conectix") {
        // A dynamic VHD starts with a copy of its footer; a fixed one has
        // it only in the last 512 bytes.
        Some(Container::Vhd)
    } else {
        None
    }
}

/// Refuse a container with the way to capture it.
pub fn refuse_container(spec: &str, c: Container) -> crate::Error {
    let fmt = c.qemu_format();
    // `-t`: without it qemu-nbd exits when the first client goes, and the capture after a
    // `--dry-run` (or a resume) could not connect. A socket of this image's own in the working
    // directory: a fixed /tmp path is shared by every user and every other export.
    let stem = std::path::Path::new(spec)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        })
        .unwrap_or_else(|| "source".to_string());
    // Quoted for the shell it is pasted into (a path with a space split in two).
    let quoted = crate::output::sh(spec);
    usage(format!(
        "{spec} is a {} disk image, not a raw disk: reading its bytes as the disk would store the \
         container, which never boots. Export it raw and give that as the source:\n  \
         qemu-nbd -r -t -f {fmt} --socket \"$PWD/{stem}.sock\" {quoted} &\n  \
         mgear capture (or sync) --source \"nbd+unix:///?socket=$PWD/{stem}.sock\" ...\n\
         (-t keeps it serving for the run after a --dry-run and for a resume; stop it with `kill \
         %1` when done, or convert it first: qemu-img convert -f {fmt} -O raw {quoted} disk.raw)",
        c.name()
    ))
}

/// The container `source` is, from its head and tail, if it is one.
pub fn container_of(source: &mut dyn Source) -> crate::Result<Option<Container>> {
    let size = source.len();
    let mut head = vec![0u8; (HEAD_LEN as u64).min(size) as usize];
    source.read_exact_at(0, &mut head)?;
    let mut tail = vec![0u8; (TAIL_LEN as u64).min(size) as usize];
    source.read_exact_at(size - tail.len() as u64, &mut tail)?;
    Ok(detect_container(&head, &tail))
}

/// Read the head and tail of `source` and refuse a container.
pub fn check_container(source: &mut dyn Source, spec: &str) -> crate::Result<()> {
    match container_of(source)? {
        Some(c) => Err(refuse_container(spec, c)),
        None => Ok(()),
    }
}

/// One line of `/proc/self/mountinfo`, the fields we use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub dev: (u32, u32),
    pub mount_point: String,
    pub read_write: bool,
    pub fs_source: String,
}

/// Parse `/proc/self/mountinfo` (proc(5)): `ID PARENT MAJ:MIN ROOT
/// MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTIONS`.
/// Malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            let (maj, min) = f.get(2)?.split_once(':')?;
            let dash = f.iter().position(|x| *x == "-")?;
            Some(Mount {
                dev: (maj.parse().ok()?, min.parse().ok()?),
                mount_point: unescape(f.get(4)?),
                read_write: f.get(5)?.split(',').any(|o| o == "rw"),
                fs_source: f.get(dash + 2).map(|s| unescape(s)).unwrap_or_default(),
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `major:minor` of a Linux `dev_t` (glibc's encoding).
pub fn split_dev(dev: u64) -> (u32, u32) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    (major as u32, minor as u32)
}

fn read_dev(file: &Path) -> Option<(u32, u32)> {
    let t = std::fs::read_to_string(file).ok()?;
    let (a, b) = t.trim().split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// The block devices whose mounts matter for `dev`: itself and its
/// partitions (sysfs).
fn with_partitions(dev: (u32, u32)) -> Vec<(u32, u32)> {
    let mut out = vec![dev];
    let sys = PathBuf::from(format!("/sys/dev/block/{}:{}", dev.0, dev.1));
    if let Ok(rd) = std::fs::read_dir(&sys) {
        for e in rd.flatten() {
            let p = e.path();
            if p.join("partition").exists() {
                if let Some(d) = read_dev(&p.join("dev")) {
                    out.push(d);
                }
            }
        }
    }
    out
}

/// Loop devices backed by `file` (sysfs `loop/backing_file`).
fn loop_devices_of(file: &Path) -> Vec<(u32, u32)> {
    let Ok(want) = std::fs::canonicalize(file) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/sys/block") {
        for e in rd.flatten() {
            let p = e.path();
            let Ok(back) = std::fs::read_to_string(p.join("loop/backing_file")) else {
                continue;
            };
            if Path::new(back.trim()) == want {
                if let Some(d) = read_dev(&p.join("dev")) {
                    out.extend(with_partitions(d));
                }
            }
        }
    }
    out
}

/// Read-write mounts of the source at `path` (a block device, a partition
/// of it, or a loop device over the image file); empty if none or unknown.
pub fn rw_mounts_of(path: &Path) -> Vec<Mount> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let Ok(meta) = std::fs::metadata(path) else {
        return Vec::new();
    };
    let devs = if meta.file_type().is_block_device() {
        with_partitions(split_dev(meta.rdev()))
    } else if meta.is_file() {
        loop_devices_of(path)
    } else {
        Vec::new()
    };
    if devs.is_empty() {
        return Vec::new();
    }
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    parse_mountinfo(&text)
        .into_iter()
        .filter(|m| m.read_write && devs.contains(&m.dev))
        .collect()
}

/// What sampling the source found.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Estimate {
    /// Chunks sampled.
    pub samples: u64,
    /// Of those, all zeros (holes included).
    pub zero_samples: u64,
    /// Stored bytes / plain bytes over the non-zero samples (1.0 without compression).
    pub ratio: f64,
    /// Source bytes this run will read (the rest of a resumed capture).
    pub to_read: u64,
    /// Bytes the capture is expected to store on the medium.
    pub stored_bytes: u64,
    /// Read speed measured on the samples (bytes/s), if any were read.
    pub measured_bytes_per_s: Option<f64>,
    /// Seconds at `--rate-limit`, else at the measured speed.
    pub seconds: Option<f64>,
    /// Of `to_read`, the bytes the source reports as holes (a sparse file's `SEEK_HOLE`, NBD
    /// `base:allocation`): zeros for certain, not an estimate.
    pub hole_bytes: u64,
}

/// Per stored chunk: the record header and the AEAD tag.
const RECORD_OVERHEAD: u64 = 64 + 16;
/// Per chunk, stored or not: its entry in INDEX and in IPART.
const INDEX_OVERHEAD: u64 = 2 * 64;
/// Journal slots, MANIFEST, key slots, segment headers and trailers, and
/// FAT rounding of a few files: a fixed allowance. Measured: 13 KiB beside 32 MiB stored on
/// a medium of 512-byte clusters; a dozen files and directories rounded up to FAT32's largest
/// usual cluster (32 KiB) is 384 KiB. It was 1 MiB, and refused media the capture fitted.
const FIXED_OVERHEAD: u64 = 384 << 10;

/// Bytes a capture of `to_read` bytes (in chunks of `chunk_size`) stores
/// when a `zero_fraction` of its chunks are zero and the rest shrink to
/// `ratio` of their size.
pub fn stored_estimate(to_read: u64, chunk_size: u32, zero_fraction: f64, ratio: f64) -> u64 {
    let chunks = to_read.div_ceil(u64::from(chunk_size.max(1)));
    let data = to_read as f64 * (1.0 - zero_fraction.clamp(0.0, 1.0));
    let stored_chunks = (chunks as f64 * (1.0 - zero_fraction.clamp(0.0, 1.0))).ceil() as u64;
    (data * ratio.max(0.0)).ceil() as u64
        + stored_chunks * RECORD_OVERHEAD
        + chunks * INDEX_OVERHEAD
        + FIXED_OVERHEAD
}

/// The most the samples read, whatever the chunk size.
const SAMPLE_BYTES: u64 = 64 << 20;

/// Of `items` (chunks, in disk order), the ones a check reads a sample of: up to 32 and
/// [`SAMPLE_BYTES`] of `chunk`-sized reads, never fewer than 4 (or all there are), one at
/// random in each of that many equal stretches ([`in_stretches`]). A delta's parent, a dirty
/// bitmap's clean chunks, a sync target's: each sampled by this one rule.
pub fn spread_sample<T: Copy>(items: &[T], chunk: u64) -> Vec<T> {
    let want = (SAMPLE_BYTES / chunk.max(1))
        .clamp(4, 32)
        .min(items.len() as u64);
    in_stretches(items.len() as u64, want)
        .map(|i| items[i as usize])
        .collect()
}

/// [`spread_sample`] with the first and last of `items` always in it: a disk shrunk and grown
/// back (`qemu-img resize`) reads zeros at its end, which a dirty bitmap does not mark.
pub fn spread_sample_with_ends<T: Copy + PartialEq>(items: &[T], chunk: u64) -> Vec<T> {
    let mut sample = spread_sample(items, chunk);
    for end in [items.first(), items.last()].into_iter().flatten() {
        if !sample.contains(end) {
            sample.push(*end);
        }
    }
    sample
}

/// `want` positions of `0..len`, one drawn at random in each of `want` equal stretches of it,
/// in order: spread over the whole disk as evenly spaced ones are, but never in step with a
/// pattern the disk repeats (evenly spaced samples of a disk changed in every third chunk
/// all fell on changed chunks, and a delta of the right disk was refused; those of a disk
/// that repeats its content every few chunks all fell on the same kind, and the space
/// estimate was half of what the capture stored).
pub fn in_stretches(len: u64, want: u64) -> impl Iterator<Item = u64> {
    use rand::SeedableRng;
    stretches(len, want, rand::rngs::SmallRng::from_entropy())
}

/// [`in_stretches`] drawn from `seed`: the same positions for the same seed. The space
/// estimate draws from the disk's size, so a `--dry-run` and the capture after it read the
/// same samples of an unchanged disk and agree (a set's dry run said 49.61 MiB and the
/// refusal right after it 48.75).
pub fn in_stretches_seeded(len: u64, want: u64, seed: u64) -> impl Iterator<Item = u64> {
    use rand::SeedableRng;
    stretches(len, want, rand::rngs::SmallRng::seed_from_u64(seed))
}

fn stretches(len: u64, want: u64, mut rng: rand::rngs::SmallRng) -> impl Iterator<Item = u64> {
    use rand::Rng;
    let want = want.min(len);
    (0..want).map(move |k| {
        let (lo, hi) = (k * len / want, (k + 1) * len / want);
        rng.gen_range(lo..hi.max(lo + 1))
    })
}

/// Sample `samples` chunks spread over the disk ([`in_stretches`]) from chunk `first` on (at most [`SAMPLE_BYTES`]
/// of them, or about a second of `rate` if one is given; at least 4).
pub fn estimate(
    source: &mut dyn Source,
    chunk_size: u32,
    first_chunk: u64,
    compress: bool,
    samples: u64,
    rate: Option<f64>,
) -> crate::Result<Estimate> {
    let size = source.len();
    let count = image_format::layout::chunk_count(size, chunk_size);
    let start = first_chunk.min(count);
    let left = count - start;
    let to_read = size.saturating_sub(start.saturating_mul(u64::from(chunk_size)));
    // At most SAMPLE_BYTES read (never fewer than 4 chunks): 32 chunks of 16 MiB read 512
    // MiB at full speed before the capture began.
    // Under a rate limit, about one second of it (at least 4 chunks), read at once as the
    // capture's own limiter lets its first second go: 32 samples of 1 MiB were read at full
    // speed before a 10 Mbit/s capture began, and reading them at the rate held it back half
    // a minute.
    let budget = rate.map_or(SAMPLE_BYTES, |r| (r as u64).min(SAMPLE_BYTES));
    let n = samples
        .min((budget / u64::from(chunk_size.max(1))).max(4))
        .min(left);
    let (mut zero, mut plain, mut stored, mut read, mut secs) = (0u64, 0u64, 0u64, 0u64, 0f64);
    // The sampled chunks' bytes outside holes, where the source says: the scaling below
    // leaves a sparse file's holes out already, and counted again in the ratio (zstd makes
    // nothing of their zeros) they halved the estimate: a plan that "fits" stopped full.
    let mut plain_data = 0u64;
    // Samples that fell in a hole the source reported (counted in `zero` too).
    let mut holes = 0u64;
    let mut buf = Vec::new();
    // Spread over the whole rest of the disk, at random within each stretch.
    let seed = size ^ (u64::from(chunk_size) << 40) ^ start.rotate_left(20);
    for index in in_stretches_seeded(left, n, seed).map(|i| start + i) {
        let len = image_format::layout::chunk_len(size, chunk_size, index) as usize;
        let offset = index * u64::from(chunk_size);
        if source.is_hole(offset, len as u64)? {
            zero += 1;
            holes += 1;
            continue;
        }
        buf.resize(len, 0);
        let t = Instant::now();
        source.read_exact_at(offset, &mut buf)?;
        secs += t.elapsed().as_secs_f64();
        read += len as u64;
        if buf.iter().all(|&b| b == 0) {
            zero += 1;
            continue;
        }
        plain += len as u64;
        plain_data += source
            .data_bytes(offset, offset + len as u64)
            .unwrap_or(len as u64);
        stored += if compress {
            zstd::bulk::compress(&buf, 3).map_or(len, |c| c.len().min(len)) as u64
        } else {
            len as u64
        };
    }
    let mut zero_fraction = if n == 0 { 0.0 } else { zero as f64 / n as f64 };
    // Where a sparse file says how much of it is data, that is what the samples describe:
    // the holes are zeros for certain (and skipped unread), the data as zero as the samples
    // that fell in it were (all of it, when none did). Sampled evenly, data a few samples
    // missed was estimated as nothing, and one sample in the data of a huge sparse file as
    // a 32nd of it.
    let data = source.data_bytes(start.saturating_mul(u64::from(chunk_size)), size);
    if let (Some(data), true) = (data, to_read > 0) {
        let in_data = n - holes;
        let zero_in_data = if in_data == 0 {
            0.0
        } else {
            (zero - holes) as f64 / in_data as f64
        };
        zero_fraction = 1.0 - data.min(to_read) as f64 / to_read as f64 * (1.0 - zero_in_data);
    }
    let ratio = match (data, plain, plain_data) {
        (_, 0, _) | (Some(_), _, 0) => 1.0,
        (Some(_), _, in_data) => (stored as f64 / in_data as f64).min(1.0),
        (None, plain, _) => stored as f64 / plain as f64,
    };
    let measured = (read > 0 && secs > 0.0).then(|| read as f64 / secs);
    let reads = data.map_or(to_read, |d| d.min(to_read));
    let seconds = rate.or(measured).map(|r| reads as f64 / r.max(1.0));
    Ok(Estimate {
        samples: n,
        zero_samples: zero,
        ratio,
        hole_bytes: data.map_or(0, |d| to_read - d.min(to_read)),
        to_read,
        stored_bytes: stored_estimate(to_read, chunk_size, zero_fraction, ratio),
        measured_bytes_per_s: measured,
        seconds,
    })
}

/// Refuse a capture that cannot fit (exit 3, the medium-full class); `media`: "the medium"
/// or "the media" given. `reserve`: what each medium of a span keeps for its copy of the index
/// and manifests, `lone` when one medium is given (it keeps that too once a second joins).
/// The missing bytes were all the message said, and a medium added with that much room was
/// refused again.
pub fn check_space(
    need: u64,
    free: Option<u64>,
    media: &str,
    reserve: u64,
    lone: bool,
) -> crate::Result<()> {
    match free {
        Some(free) if need > free => {
            let missing = need - free;
            let copies = if lone { 2 } else { 1 };
            Err(crate::exit::coded_next(
                crate::exit::IO,
                format_args!(
                    "{media} cannot hold this capture: it needs about {} and {} are free \
                     ({} missing; one more medium needs room for about {}: that, and {} for the \
                     copies of the index and manifests a span keeps on {}); nothing was written",
                    human_bytes(need),
                    human_bytes(free),
                    human_bytes(missing),
                    human_bytes(missing.saturating_add(reserve.saturating_mul(copies))),
                    human_bytes(reserve.saturating_mul(copies)),
                    if lone { "each medium" } else { "it" }
                ),
                NO_ROOM_HINT,
            ))
        }
        _ => Ok(()),
    }
}

/// What to do about a capture that does not fit (the run's refusal, and the plan's).
pub const NO_ROOM_HINT: &str = "give one more medium (another --medium or --appliance: the \
     capture continues on it when the first fills), use a larger medium, remove captures that \
     are no longer needed (`mgear medium rm`), or pass --skip-space-check if you know the disk \
     stores smaller than the sampled estimate";

/// [`check_space`] for a resume, which goes on anyway: the warning, if the rest of the capture
/// may not fit.
pub fn resume_space_warning(need: u64, free: Option<u64>) -> Option<String> {
    let free = free.filter(|f| need > *f)?;
    Some(format!(
        "the medium may not hold the rest of this capture: it needs about {} and {} are free; \
         resuming anyway (a full medium stops it as \"medium full\", and it goes on with one more \
         --medium or --appliance given then)",
        human_bytes(need),
        human_bytes(free)
    ))
}

/// Every disk of the machine before the first is read: a path that is not
/// there, or is no disk (a directory, a character device, a FIFO, whose
/// open would wait for a writer forever), was found only after the disks
/// before it were captured; and one disk given twice (however spelled, a
/// hard link too) was captured as two.
pub fn check_sources(sources: &[String]) -> crate::Result<()> {
    // Paths given (disk, path), the one image file an NBD export here serves whole (disk,
    // identity), and each export's place (disk, endpoint).
    let mut paths: Vec<(usize, PathBuf)> = Vec::new();
    let mut served: Vec<(usize, (u64, u64))> = Vec::new();
    let mut exports: Vec<(usize, String)> = Vec::new();
    let same = |first: usize, k: usize| {
        usage(format!(
            "disk {first} ({}) and disk {k} ({}) are the same disk: give each disk of the \
             machine once",
            sources[first], sources[k]
        ))
    };
    for (k, s) in sources.iter().enumerate() {
        let p = match crate::spec::Source::parse(s) {
            Ok(crate::spec::Source::Path(p)) => p,
            Ok(crate::spec::Source::Nbd(u)) => {
                // The same export however spelled, or the one image file an export serves
                // whole (with its backing files, or a window of it, which disk is ambiguous).
                let endpoint = crate::guard::nbd_endpoint(&u);
                if let Some((first, _)) = exports.iter().find(|(_, e)| *e == endpoint) {
                    return Err(same(*first, k));
                }
                exports.push((k, endpoint));
                if let [(id, _)] = crate::guard::served_files(&u).as_slice() {
                    if !crate::guard::serves_a_window(&u) {
                        let twin = served
                            .iter()
                            .find(|(_, i)| i == id)
                            .map(|(f, _)| *f)
                            .or_else(|| {
                                paths
                                    .iter()
                                    .find(|(_, p)| {
                                        std::fs::metadata(p)
                                            .is_ok_and(|m| crate::guard::disk_identity(&m) == *id)
                                    })
                                    .map(|(f, _)| *f)
                            });
                        if let Some(first) = twin {
                            return Err(same(first, k));
                        }
                        served.push((k, *id));
                    }
                }
                continue;
            }
            _ => continue,
        };
        let meta = std::fs::metadata(&p).map_err(|e| {
            usage(format!(
                "--source number {} ({s}, disk {k}): {e}: give the disk's image file or block \
                 device; nothing was captured",
                k + 1
            ))
        })?;
        if let Some(what) = crate::source::not_a_disk(meta.file_type()) {
            return Err(usage(format!(
                "--source number {} ({s}, disk {k}) is {what}, not a disk: give the disk's image \
                 file or block device; nothing was captured",
                k + 1
            )));
        }
        // The same file or device whatever the path (a hard link, a loop device over the
        // file); loop devices over disjoint windows of one image are two disks.
        if let Some((first, _)) = paths.iter().find(|(_, q)| crate::guard::overlaps(q, &p)) {
            return Err(same(*first, k));
        }
        let id = crate::guard::disk_identity(&meta);
        if let Some((first, _)) = served.iter().find(|(_, i)| *i == id) {
            return Err(same(*first, k));
        }
        paths.push((k, p));
    }
    Ok(())
}

/// Human duration.
pub fn human_seconds(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_with_ends_holds_the_first_and_last_item_once() {
        let items: Vec<u64> = (0..1000).collect();
        let s = spread_sample_with_ends(&items, 1 << 20);
        assert!(s.contains(&0) && s.contains(&999), "{s:?}");
        let mut seen = s.clone();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), s.len(), "{s:?}");
        assert!(spread_sample_with_ends::<u64>(&[], 1 << 20).is_empty());
    }

    /// Holes inside the sampled chunks count once: a 64 MiB file holding 640 KiB of random
    /// data at the start of each MiB (the rest holes) was estimated at 26 MiB, its holes
    /// taken out by the file's data size and again by the ratio (zstd makes nothing of a
    /// hole's zeros), and a capture planned to fit stopped full at 40 MiB.
    #[test]
    fn holes_inside_a_chunk_are_left_out_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("holey.raw");
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(64 << 20).unwrap();
        // xorshift64: bytes zstd cannot shrink.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..640u32 << 10)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        for k in 0..64u64 {
            std::os::unix::fs::FileExt::write_all_at(&f, &noise, k << 20).unwrap();
        }
        drop(f);
        let mut src = crate::source::FileSource::open(path).unwrap();
        let e = estimate(&mut src, 1 << 20, 0, true, 32, None).unwrap();
        assert!(e.stored_bytes >= 40 << 20, "{e:?}");
        assert!(e.stored_bytes < 48 << 20, "{e:?}");
    }

    /// A sparse file's holes count as zeros, however the samples fall: 1 GiB holding 1 MiB
    /// (the first sample lands in it) was estimated at 1/32 of the disk.
    #[test]
    fn a_sparse_files_holes_are_not_estimated_as_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse.raw");
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(1 << 30).unwrap();
        let noise: Vec<u8> = (0..1u32 << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        std::os::unix::fs::FileExt::write_all_at(&f, &noise, 0).unwrap();
        drop(f);
        let mut src = crate::source::FileSource::open(path).unwrap();
        assert_eq!(
            src.data_bytes(0, u64::MAX).map(|d| d >= 1 << 20),
            Some(true)
        );
        let e = estimate(&mut src, 1 << 20, 0, false, 32, None).unwrap();
        // The data (1 MiB, or the file system's allocation unit around it), the index of
        // 1024 chunks and the fixed part: nowhere near 32 MiB.
        assert!(e.stored_bytes < 8 << 20, "{e:?}");
        // Data no sample falls in (70 MiB deep in a 16 GiB file) is data all the same: it was
        // estimated at nothing, and a capture planned to fit filled the medium.
        let path = dir.path().join("deep.raw");
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(16 << 30).unwrap();
        for k in 0..70u64 {
            std::os::unix::fs::FileExt::write_all_at(&f, &noise, (9000 + k) << 20).unwrap();
        }
        drop(f);
        let mut src = crate::source::FileSource::open(path).unwrap();
        let e = estimate(&mut src, 1 << 20, 0, false, 32, None).unwrap();
        assert!(e.stored_bytes > 70 << 20, "{e:?}");
    }

    #[test]
    fn a_resume_is_warned_where_a_new_capture_is_refused() {
        assert!(check_space(10 << 20, Some(4 << 20), "the medium", 0, true).is_err());
        let w = resume_space_warning(10 << 20, Some(4 << 20)).expect("warned");
        assert!(
            w.contains("needs about 10.00 MiB and 4.00 MiB are free"),
            "{w}"
        );
        assert!(w.contains("one more --medium"), "{w}");
        assert_eq!(resume_space_warning(4 << 20, Some(10 << 20)), None);
        assert_eq!(resume_space_warning(4 << 20, None), None);
    }

    #[test]
    fn containers_are_known_by_their_magic() {
        let mut head = vec![0u8; HEAD_LEN];
        let tail = vec![0u8; TAIL_LEN];
        assert_eq!(detect_container(&head, &tail), None, "zeros are raw");
        // An MBR disk is raw.
        head[510] = 0x55;
        head[511] = 0xaa;
        assert_eq!(detect_container(&head, &tail), None);
        let with = |magic: &[u8], at: usize| {
            let mut h = vec![0u8; HEAD_LEN];
            h[at..at + magic.len()].copy_from_slice(magic);
            detect_container(&h, &tail)
        };
        assert_eq!(with(b"QFI\xfb\0\0\0\x03", 0), Some(Container::Qcow2));
        assert_eq!(with(b"KDMV", 0), Some(Container::Vmdk));
        assert_eq!(with(b"# Disk DescriptorFile\n", 0), Some(Container::Vmdk));
        assert_eq!(with(b"vhdxfile", 0), Some(Container::Vhdx));
        assert_eq!(with(&[0x7f, 0x10, 0xda, 0xbe], 0x40), Some(Container::Vdi));
        assert_eq!(with(b"conectix", 0), Some(Container::Vhd));
        // A fixed VHD: raw data and a footer at the end.
        let mut t = vec![0u8; TAIL_LEN];
        t[..8].copy_from_slice(b"conectix");
        assert_eq!(detect_container(&head, &t), Some(Container::Vhd));
        // Short sources (smaller than the head) are not misread.
        assert_eq!(detect_container(b"QF", b""), None);
        assert_eq!(Container::Vhd.qemu_format(), "vpc");
        let e = refuse_container("web.qcow2", Container::Qcow2).to_string();
        assert!(e.contains("qemu-nbd -r -t -f qcow2"), "{e}");
        // A path with a space is quoted for the shell the line is pasted into.
        let e = refuse_container("my vm.qcow2", Container::Qcow2).to_string();
        assert!(
            e.contains("--socket \"$PWD/source.sock\" 'my vm.qcow2' &")
                && e.contains("-O raw 'my vm.qcow2' disk.raw"),
            "{e}"
        );
        assert_eq!(
            crate::exit::code_of(&refuse_container("x", Container::Vmdk)),
            crate::exit::USAGE
        );
    }

    #[test]
    fn mountinfo_lines_are_parsed() {
        let text = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro
36 22 7:0 / /mnt/my\\040disk rw,nosuid - ext4 /dev/loop0 rw
37 22 8:17 / /media/ro ro,relatime - vfat /dev/sdb1 ro
garbage line
";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].dev, (8, 1));
        assert!(m[0].read_write);
        assert_eq!(m[1].mount_point, "/mnt/my disk");
        assert_eq!(m[1].fs_source, "/dev/loop0");
        assert!(!m[2].read_write);
    }

    #[test]
    fn dev_numbers_split_like_glibc() {
        // glibc's makedev, spelled out.
        fn makedev(major: u64, minor: u64) -> u64 {
            ((major & 0xfff) << 8)
                | ((major & !0xfff) << 32)
                | (minor & 0xff)
                | ((minor & !0xff) << 12)
        }
        assert_eq!(split_dev(makedev(8, 17)), (8, 17));
        assert_eq!(split_dev(makedev(259, 65536)), (259, 65536));
        assert_eq!(split_dev(makedev(4095, 255)), (4095, 255));
    }

    #[test]
    fn samples_are_one_per_stretch_and_not_in_step_with_the_disk() {
        let draw: Vec<u64> = in_stretches(96, 32).collect();
        assert_eq!(draw.len(), 32);
        for (k, i) in draw.iter().enumerate() {
            assert!((3 * k as u64..3 * k as u64 + 3).contains(i), "{draw:?}");
        }
        // A disk changed in every third chunk: evenly spaced samples were all changed chunks
        // (a delta of the right disk refused); these are not.
        assert!(in_stretches(96, 32).any(|i| i % 3 != 0));
        assert_eq!(in_stretches(5, 32).collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
        assert_eq!(in_stretches(0, 32).count(), 0);
        // Seeded: the same draw every time (a dry run and its capture), still one per stretch.
        let a: Vec<u64> = in_stretches_seeded(96, 32, 7).collect();
        assert_eq!(a, in_stretches_seeded(96, 32, 7).collect::<Vec<_>>());
        assert!(
            a.iter().enumerate().all(|(k, &i)| i / 3 == k as u64),
            "{a:?}"
        );
        assert!(a.iter().any(|i| i % 3 != 0), "{a:?}");
        let items: Vec<u64> = (0..1000).collect();
        let s = spread_sample(&items, 1 << 20);
        assert_eq!(s.len(), 32);
        assert!(s.windows(2).all(|w| w[0] < w[1]), "{s:?}");
    }

    #[test]
    fn estimate_math() {
        const MIB: u64 = 1 << 20;
        // All zeros: only the index and the fixed allowance.
        assert_eq!(
            stored_estimate(64 * MIB, MIB as u32, 1.0, 1.0),
            64 * INDEX_OVERHEAD + FIXED_OVERHEAD
        );
        // Half zeros, the rest halved by compression.
        assert_eq!(
            stored_estimate(64 * MIB, MIB as u32, 0.5, 0.5),
            16 * MIB + 32 * RECORD_OVERHEAD + 64 * INDEX_OVERHEAD + FIXED_OVERHEAD
        );
        // Incompressible: never smaller than the data.
        assert!(stored_estimate(100 * MIB, MIB as u32, 0.0, 1.0) > 100 * MIB);
    }

    /// A source of `chunks` chunks: even ones zero, odd ones random.
    struct Striped(Vec<u8>);
    impl Source for Striped {
        fn len(&self) -> u64 {
            self.0.len() as u64
        }
        fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> crate::Result<()> {
            let o = offset as usize;
            buf.copy_from_slice(&self.0[o..o + buf.len()]);
            Ok(())
        }
        fn describe(&self) -> String {
            "striped".into()
        }
    }

    /// A disk of `len` bytes of 0x5a that counts what is read of it.
    struct Counting {
        len: u64,
        read: u64,
    }
    impl Source for Counting {
        fn len(&self) -> u64 {
            self.len
        }
        fn read_exact_at(&mut self, _: u64, buf: &mut [u8]) -> crate::Result<()> {
            buf.fill(0x5a);
            self.read += buf.len() as u64;
            Ok(())
        }
        fn describe(&self) -> String {
            "counting".into()
        }
    }

    /// The samples read at most SAMPLE_BYTES whatever the chunk size (32 chunks of 16 MiB
    /// read 512 MiB at full speed), and about a second of `--rate-limit` when one is given.
    #[test]
    fn sampling_is_bounded_and_rate_limited() {
        let mut s = Counting {
            len: 64 << 30,
            read: 0,
        };
        let e = estimate(&mut s, 16 << 20, 0, false, 32, None).unwrap();
        assert_eq!(e.samples, 4);
        assert_eq!(s.read, 64 << 20);
        let mut s = Counting {
            len: 64 << 20,
            read: 0,
        };
        // Under --rate-limit about a second of it: 32 chunks of 64 KiB asked at 128 KiB/s
        // read 2; never fewer than 4.
        let e = estimate(&mut s, 64 << 10, 0, false, 32, Some(128.0 * 1024.0)).unwrap();
        assert_eq!((e.samples, s.read), (4, 256 << 10));
        let e = estimate(&mut s, 64 << 10, 0, false, 32, Some(1024.0 * 1024.0)).unwrap();
        assert_eq!(e.samples, 16);
    }

    #[test]
    fn sampling_sees_zeros_and_random_data() {
        let cs = 64 * 1024usize;
        let mut data = vec![0u8; 16 * cs];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for c in (1..16).step_by(2) {
            for b in &mut data[c * cs..(c + 1) * cs] {
                // xorshift64: incompressible enough for zstd.
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = (x >> 24) as u8;
            }
        }
        let mut s = Striped(data);
        let e = estimate(&mut s, cs as u32, 0, true, 16, Some(4e6)).unwrap();
        assert_eq!((e.samples, e.zero_samples), (16, 8));
        assert!(e.ratio > 0.99, "random data does not compress: {}", e.ratio);
        let half = 8 * cs as u64;
        assert!(
            e.stored_bytes >= half && e.stored_bytes < half + (2 << 20),
            "{e:?}"
        );
        assert_eq!(e.seconds, Some(16.0 * cs as f64 / 4e6));
        // Resumed at chunk 8: only the second half is left to read.
        let e = estimate(&mut s, cs as u32, 8, false, 4, None).unwrap();
        assert_eq!(e.to_read, half);
        assert_eq!(e.samples, 4);
        assert_eq!(e.ratio, 1.0);
    }

    #[test]
    fn space_check_says_what_is_missing() {
        check_space(10, Some(10), "the medium", 8 << 20, true).unwrap();
        check_space(10, None, "the medium", 8 << 20, true).unwrap();
        let e = check_space(3 << 20, Some(1 << 20), "the medium", 8 << 20, true).unwrap_err();
        assert_eq!(crate::exit::code_of(&e), crate::exit::IO);
        assert!(e.to_string().contains("2.00 MiB missing"), "{e}");
        // One more medium keeps its copy of the index and manifests, and a lone medium keeps
        // one too once it becomes the first of a span: a medium of the missing size was refused
        // again.
        assert!(
            e.to_string()
                .contains("one more medium needs room for about 18.00 MiB"),
            "{e}"
        );
        let e = check_space(3 << 20, Some(1 << 20), "the media", 8 << 20, false).unwrap_err();
        assert!(
            e.to_string()
                .contains("one more medium needs room for about 10.00 MiB"),
            "{e}"
        );
    }
}
