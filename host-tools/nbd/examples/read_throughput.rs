//! Benchmark: our client's sequential read throughput from a `qemu-nbd`
//! export, printed as a ratio against `qemu-img convert` (and `nbdcopy`)
//! reading the same export in the same run.
//!
//! Run: `cargo run --release -p mgear-nbd --example read_throughput [MiB]`
//! (needs qemu-utils and libnbd-bin). Figures are printed, never asserted.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mgear_nbd::{Client, ConnectOptions, NbdUrl};

/// Kills the export when the benchmark ends, however it ends.
struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {cmd}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// Measurement rounds per reader.
const ROUNDS: usize = 3;

fn timed(f: impl FnOnce() -> Result<(), String>) -> Result<Duration, String> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed())
}

fn main() -> Result<(), String> {
    let mib: u64 = match std::env::args().nth(1) {
        Some(a) => a
            .parse()
            .map_err(|_| format!("size in MiB expected, got '{a}'"))?,
        None => 512,
    };
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let raw = dir.path().join("src.raw");
    // Incompressible, fully allocated content: nobody can skip holes.
    let mut data = vec![0u8; (mib * 1024 * 1024) as usize];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    std::fs::write(&raw, &data).map_err(|e| e.to_string())?;
    drop(data);
    let img = dir.path().join("src.qcow2");
    run(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            path(&raw)?,
            path(&img)?,
        ],
    )?;

    let sock = dir.path().join("s");
    let _peer = Peer(
        Command::new("qemu-nbd")
            .args(["-t", "-r", "-f", "qcow2", "-k", path(&sock)?, path(&img)?])
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start qemu-nbd: {e}"))?,
    );
    let url = NbdUrl::Unix {
        socket: sock.clone(),
        export: String::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while Client::connect(&url, &ConnectOptions::default()).is_err() {
        if Instant::now() > deadline {
            return Err("qemu-nbd did not start".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let url_s = url.to_string();

    let read_ours = || {
        timed(|| {
            let mut c =
                Client::connect(&url, &ConnectOptions::default()).map_err(|e| e.to_string())?;
            let mut buf = vec![0u8; 32 * 1024 * 1024];
            let mut off = 0;
            while off < c.size() {
                let n = (c.size() - off).min(buf.len() as u64) as usize;
                c.read_at(off, &mut buf[..n]).map_err(|e| e.to_string())?;
                off += n as u64;
            }
            c.disconnect().map_err(|e| e.to_string())
        })
    };
    // The null driver discards writes, so both sides only read.
    let null_target = format!("driver=null-co,size={}", mib * 1024 * 1024);
    let read_qemu = || {
        timed(|| {
            run(
                "qemu-img",
                &[
                    "convert",
                    "-n",
                    "-f",
                    "raw",
                    &url_s,
                    "--target-image-opts",
                    &null_target,
                ],
            )
        })
    };
    let read_nbdcopy = || timed(|| run("nbdcopy", &[&url_s, "null:"]));

    // Interleaved rounds, best of each: a shared machine's load spikes hit
    // every reader alike instead of whichever happened to run then.
    let (mut ours, mut qemu, mut nbdcopy) = (Duration::MAX, Duration::MAX, None::<Duration>);
    for _ in 0..ROUNDS {
        ours = ours.min(read_ours()?);
        qemu = qemu.min(read_qemu()?);
        if let Ok(d) = read_nbdcopy() {
            nbdcopy = Some(nbdcopy.map_or(d, |n| n.min(d)));
        }
    }

    let rate = |d: Duration| mib as f64 / d.as_secs_f64();
    println!("export: {mib} MiB qcow2 via qemu-nbd on a Unix socket, best of {ROUNDS} rounds");
    println!("mgear-nbd client : {:8.1} MiB/s", rate(ours));
    println!("qemu-img convert : {:8.1} MiB/s", rate(qemu));
    if let Some(n) = nbdcopy {
        println!("nbdcopy          : {:8.1} MiB/s", rate(n));
    }
    println!(
        "ratio mgear-nbd / qemu-img convert: {:.2}",
        qemu.as_secs_f64() / ours.as_secs_f64()
    );
    Ok(())
}

fn path(p: &Path) -> Result<&str, String> {
    p.to_str()
        .ok_or_else(|| format!("non-UTF-8 path {}", p.display()))
}
