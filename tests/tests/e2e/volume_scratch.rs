//! The volume seam's done-when: ingesting a 4 GiB disk (sparse, a few MiB of
//! real data) into an NBD export (qemu-nbd serving a thin qcow2), a `qcow2:`
//! target and a `libvirt:` pool volume writes straight into the volume. The
//! state dir is sampled from a thread while each ingest runs and checked at
//! the end: it never holds a file larger than a few chunks (no staging
//! copy), and the volume holds exactly the source's bytes.
//!
//! Needs qemu-utils; the libvirt part needs libvirt-daemon-system and
//! libvirt-clients (and runs as root, like `scripts/libvirtd.sh`).

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mgear_tests::{output_text, qemu_nbd, Env};
use rand::{RngCore, SeedableRng};

const DISK: u64 = 4 << 30;
/// The default chunk size (image_format::layout::DEFAULT_CHUNK).
const CHUNK: u64 = 1 << 20;
/// "A few chunks": the largest file the state dir may ever hold.
const MAX_SCRATCH: u64 = 4 * CHUNK;

/// A 4 GiB sparse disk with data at its start, in the middle, straddling a
/// chunk boundary and at its very end.
fn sparse_disk(path: &Path) {
    let f = fs::File::create(path).unwrap();
    f.set_len(DISK).unwrap();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(41);
    for (at, len) in [
        (0u64, 2 << 20),
        (1 << 30, 3 << 20),
        ((3 << 30) - (1 << 19), 1 << 20),
        (DISK - (1 << 20), 1 << 20),
    ] {
        let mut buf = vec![0u8; len];
        rng.fill_bytes(&mut buf);
        f.write_all_at(&buf, at).unwrap();
    }
}

/// Samples the largest regular file under `dir` until stopped.
struct Sampler {
    stop: Arc<AtomicBool>,
    max: Arc<AtomicU64>,
    samples: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn largest_file(dir: &Path) -> u64 {
    let mut max = 0;
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let Ok(md) = fs::symlink_metadata(e.path()) else {
                continue;
            };
            if md.is_dir() {
                max = max.max(largest_file(&e.path()));
            } else if md.is_file() {
                // Allocated bytes too: a sparse staging file is still a copy.
                use std::os::unix::fs::MetadataExt;
                max = max.max(md.len()).max(md.blocks() * 512);
            }
        }
    }
    max
}

impl Sampler {
    fn start(dir: PathBuf) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let max = Arc::new(AtomicU64::new(0));
        let samples = Arc::new(AtomicU64::new(0));
        let (s, m, n) = (stop.clone(), max.clone(), samples.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                m.fetch_max(largest_file(&dir), Ordering::SeqCst);
                n.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Sampler {
            stop,
            max,
            samples,
            thread: Some(thread),
        }
    }

    /// Stop and return (largest file seen, number of samples).
    fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        (
            self.max.load(Ordering::SeqCst),
            self.samples.load(Ordering::SeqCst),
        )
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Capture the sparse disk onto a dir: medium.
fn captured(e: &Env) {
    e.keygen();
    sparse_disk(&e.p("disk.raw"));
    fs::create_dir(e.p("mnt")).unwrap();
    e.capture("dir:mnt", "big").source("disk.raw").ok();
}

/// Ingest into `target` with its own state dir, sampled all along; returns
/// the `--json` report after checking the scratch bound.
fn ingest_sampled(e: &Env, target: &str, state: &str) -> serde_json::Value {
    let sdir = e.p(state);
    let sampler = Sampler::start(sdir.clone());
    let r = e
        .ingest("dir:mnt", "big")
        .untrusted()
        .target(target)
        .args(&["--state-dir", &sdir.display().to_string()])
        .json();
    let (max, samples) = sampler.finish();
    assert!(samples >= 2, "the sampler did not run during the ingest");
    assert_eq!(r["verified"], true, "{r}");
    assert_eq!(r["disk_size"], DISK, "{r}");
    assert!(
        max <= MAX_SCRATCH,
        "ingest into {target}: the state dir held a file of {max} bytes (limit {MAX_SCRATCH}): a staging copy?"
    );
    let after = largest_file(&sdir);
    assert!(after <= MAX_SCRATCH, "{after} bytes left in the state dir");
    // Only the record of the finished ingest (a few lines: a re-run keeps the volume) stays.
    let left: Vec<String> = fs::read_dir(&sdir)
        .unwrap()
        .flatten()
        .map(|d| d.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".done"))
        .collect();
    assert!(left.is_empty(), "left in the state dir: {left:?}");
    r
}

/// `qemu-img compare` (exit 0: identical contents).
fn same_contents(raw: &Path, image: &Path, fmt: &str) {
    let o = Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", fmt])
        .arg(raw)
        .arg(image)
        .output()
        .expect("qemu-img (Debian: qemu-utils)");
    assert!(
        o.status.success(),
        "{} differs from {}: {}",
        image.display(),
        raw.display(),
        output_text(&o)
    );
}

fn allocated(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(p).unwrap().blocks() * 512
}

#[test]
fn ingest_into_nbd_and_qcow2_keeps_scratch_to_a_few_chunks() {
    let e = Env::new();
    captured(&e);

    // qcow2: written through our own qemu-nbd, thin, and exactly the disk.
    ingest_sampled(&e, "qcow2:v.qcow2", "state-qcow2");
    same_contents(&e.p("disk.raw"), &e.p("v.qcow2"), "qcow2");
    assert!(
        allocated(&e.p("v.qcow2")) < 64 << 20,
        "the qcow2 image is not thin: {} bytes",
        allocated(&e.p("v.qcow2"))
    );

    // NBD: qemu-nbd serving a thin qcow2, as a stand-in for rbd or a cloud volume.
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", &e.s("export.qcow2"), "4G"])
        .status()
        .unwrap();
    assert!(st.success());
    let sock = e.p("export.sock");
    let server = qemu_nbd(&["-t", "-f", "qcow2"], &sock, &e.p("export.qcow2"));
    let url = format!("nbd+unix:///?socket={}", sock.display());
    let ingested = std::panic::catch_unwind(|| ingest_sampled(&e, &url, "state-nbd"));
    drop(server);
    ingested.unwrap();
    same_contents(&e.p("disk.raw"), &e.p("export.qcow2"), "qcow2");
    assert!(
        allocated(&e.p("export.qcow2")) < 64 << 20,
        "the export is not thin"
    );
}

/// Deletes the pool volume however the test ends.
struct VolumeGuard(String);

impl Drop for VolumeGuard {
    fn drop(&mut self) {
        let _ = Command::new("virsh")
            .args([
                "-c",
                "qemu:///system",
                "vol-delete",
                "--pool",
                "mgear",
                &self.0,
            ])
            .output();
    }
}

#[test]
fn ingest_into_a_libvirt_volume_keeps_scratch_to_a_few_chunks() {
    let _serial = crate::LIBVIRT.lock().unwrap_or_else(|p| p.into_inner());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/libvirtd.sh");
    let o = Command::new("sh")
        .arg(&script)
        .output()
        .expect("run libvirtd.sh");
    assert!(
        o.status.success(),
        "libvirtd.sh failed: {}",
        output_text(&o)
    );
    let e = Env::new();
    captured(&e);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let name = format!("mgear-scratch-{}-{nanos}.raw", std::process::id());
    let _guard = VolumeGuard(name.clone());
    let r = ingest_sampled(&e, &format!("libvirt:mgear/{name}"), "state-libvirt");
    let path = PathBuf::from(r["volume"].as_str().expect("volume path"));
    same_contents(&e.p("disk.raw"), &path, "raw");
    assert!(allocated(&path) < 64 << 20, "the pool volume is not sparse");
}

/// A pool volume without a host path (rbd, iscsi-direct) is written through
/// libvirt's stream API: forced here on the dir pool, the bytes land and read
/// back the same, with no file anywhere but the pool.
#[test]
fn libvirt_stream_api_writes_and_reads_back_a_pool_volume() {
    use mgear_volume::{Found, LibvirtVolume, Prepare, Volume, WriteAt};
    let _serial = crate::LIBVIRT.lock().unwrap_or_else(|p| p.into_inner());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/libvirtd.sh");
    let o = Command::new("sh")
        .arg(&script)
        .output()
        .expect("run libvirtd.sh");
    assert!(
        o.status.success(),
        "libvirtd.sh failed: {}",
        output_text(&o)
    );
    let e = Env::new();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let name = format!("mgear-stream-{}-{nanos}.raw", std::process::id());
    let _guard = VolumeGuard(name.clone());
    let prep = Prepare {
        disk_size: 8 << 20,
        head_len: 1 << 20,
        state_dir: e.p(""),
        force: false,
        what: "stream test".into(),
    };
    let mut v = LibvirtVolume::open_streamed("qemu:///system", "mgear", &name, &prep).unwrap();
    assert_eq!(v.found(), Found::New);
    assert!(v.path().is_none());
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    let mut a = vec![0u8; 1 << 20];
    let mut b = vec![0u8; 3 << 20];
    rng.fill_bytes(&mut a);
    rng.fill_bytes(&mut b);
    // Two consecutive writes (one upload) and one apart.
    v.write_batch(&[
        WriteAt {
            offset: 1 << 20,
            data: &a,
        },
        WriteAt {
            offset: 2 << 20,
            data: &b[..1 << 20],
        },
        WriteAt {
            offset: 5 << 20,
            data: &b[1 << 20..],
        },
    ])
    .unwrap();
    v.write_zeroes(0, 1 << 20).unwrap();
    v.flush().unwrap();
    let mut back = vec![0u8; 1 << 20];
    v.read_at(1 << 20, &mut back).unwrap();
    assert!(back == a);
    let mut back = vec![0u8; 2 << 20];
    v.read_at(5 << 20, &mut back).unwrap();
    assert!(back[..] == b[1 << 20..]);
    let done = Box::new(v).finish().unwrap();
    assert_eq!(done.volume, Some(format!("libvirt:mgear/{name}")));
    // What libvirt holds, downloaded whole.
    let all = e.p("all.raw");
    let o = Command::new("virsh")
        .args([
            "-c",
            "qemu:///system",
            "vol-download",
            "--pool",
            "mgear",
            &name,
        ])
        .arg(&all)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", output_text(&o));
    let got = fs::read(&all).unwrap();
    assert_eq!(got.len(), 8 << 20);
    assert!(got[..1 << 20].iter().all(|&x| x == 0));
    assert!(got[1 << 20..2 << 20] == a[..]);
    assert!(got[2 << 20..3 << 20] == b[..1 << 20]);
    assert!(got[3 << 20..5 << 20].iter().all(|&x| x == 0));
    assert!(got[5 << 20..7 << 20] == b[1 << 20..]);
    assert!(got[7 << 20..].iter().all(|&x| x == 0));
    // The marker is gone: the volume is final.
    assert!(fs::read_dir(e.p(""))
        .unwrap()
        .flatten()
        .all(|d| !d.file_name().to_string_lossy().ends_with("incomplete")));
}
