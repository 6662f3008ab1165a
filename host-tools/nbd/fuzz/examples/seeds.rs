//! Seed corpus for the NBD fuzz targets, recorded from real peers over Unix
//! sockets in a temporary directory:
//! - client: every byte a server sent to our client doing what the fuzz
//!   target does (handshake with `base:allocation` and
//!   `qemu:dirty-bitmap:b0`, read, block status walks, write, flush), from
//!   `qemu-nbd` (qcow2 with a dirty bitmap), `nbdkit memory` and our server;
//! - server: every byte a client sent to our server (the target's 64 KiB
//!   export `fuzz`), from `nbdinfo`, `qemu-io`, `qemu-img`, `nbdcopy` and
//!   our client;
//! - url: URLs in the forms users type.
//!
//! `cargo run --example seeds -- CORPUS_DIR` writes
//! `CORPUS_DIR/<target>/seed-*` (`scripts/fuzz.sh` runs it before fuzzing).
//! A peer that is not installed is skipped with a note.

use std::io::{self, Read};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use std::{env, fs, thread};

use mgear_nbd::{Client, ConnectOptions, BASE_ALLOCATION};
use mgear_nbd_proto::{serve_stream, BlockBackend};

/// The server target's export: 64 KiB, writable.
const DISK: usize = 64 * 1024;

struct Disk(Mutex<Vec<u8>>);

impl Disk {
    fn new() -> Self {
        // Some data so reads and maps are not all zero.
        let mut d = vec![0u8; DISK];
        d[..4096].fill(0x5a);
        Disk(Mutex::new(d))
    }
}

impl BlockBackend for Disk {
    fn size(&self) -> u64 {
        DISK as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let d = self.0.lock().map_err(|_| io::Error::other("poisoned"))?;
        let o = offset as usize;
        let src = d.get(o..o + buf.len()).ok_or(io::ErrorKind::InvalidInput)?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut d = self.0.lock().map_err(|_| io::Error::other("poisoned"))?;
        let o = offset as usize;
        let dst = d
            .get_mut(o..o + data.len())
            .ok_or(io::ErrorKind::InvalidInput)?;
        dst.copy_from_slice(data);
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    fn writable(&self) -> bool {
        true
    }
}

/// A reader that keeps a copy of everything read through it.
struct Tee<R> {
    inner: R,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Ok(mut s) = self.seen.lock() {
            s.extend_from_slice(&buf[..n]);
        }
        Ok(n)
    }
}

fn write(dir: &Path, target: &str, name: &str, data: &[u8]) {
    let d = dir.join(target);
    fs::create_dir_all(&d).expect("create corpus dir");
    fs::write(d.join(format!("seed-{name}")), data).expect("write seed");
    println!("  {target}/seed-{name}: {} bytes", data.len());
}

/// What the client target does, on a connected stream; returns the bytes
/// the server sent (also when the server refused something: the refusal
/// is a seed too).
fn record_client(stream: UnixStream) -> io::Result<Vec<u8>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let reader = Tee {
        inner: stream.try_clone()?,
        seen: seen.clone(),
    };
    let opts = ConnectOptions {
        meta_contexts: vec![BASE_ALLOCATION.into(), "qemu:dirty-bitmap:b0".into()],
        read_only: false,
    };
    if let Ok(mut c) = Client::handshake(Box::new(reader), Box::new(stream), "seed", "fuzz", &opts)
    {
        let size = c.size();
        let mut buf = vec![0u8; size.min(4096) as usize];
        // Errors are part of the conversation too.
        let _ = c.read_at(0, &mut buf);
        let _ = c.allocated_ranges(0, size);
        let _ = c.dirty_ranges("b0", 0, size);
        let _ = c.write_at(0, b"x");
        let _ = c.flush();
        let _ = c.disconnect();
    }
    let v = seen
        .lock()
        .map_err(|_| io::Error::other("poisoned"))?
        .clone();
    Ok(v)
}

/// Serves one connection of our server on `listener`, recording what the
/// client sent.
fn record_server(listener: &UnixListener) -> io::Result<Vec<u8>> {
    let (stream, _) = listener.accept()?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let reader = Tee {
        inner: stream.try_clone()?,
        seen: seen.clone(),
    };
    let _ = serve_stream(reader, stream, "fuzz", &Disk::new(), "seed");
    let v = seen
        .lock()
        .map_err(|_| io::Error::other("poisoned"))?
        .clone();
    Ok(v)
}

/// Waits for a peer's socket to accept connections.
fn connect(sock: &Path, peer: &mut Child) -> io::Result<UnixStream> {
    let start = Instant::now();
    loop {
        match UnixStream::connect(sock) {
            Ok(s) => return Ok(s),
            Err(e) if start.elapsed() > Duration::from_secs(10) => return Err(e),
            Err(_) => {
                if let Some(st) = peer.try_wait()? {
                    return Err(io::Error::other(format!("peer exited: {st}")));
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn run(cmd: &str, args: &[&str]) -> io::Result<()> {
    let st = Command::new(cmd)
        .args(args)
        .stdout(Stdio::null())
        .status()?;
    if st.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!("{cmd} failed: {st}")))
    }
}

/// Our client against a server started by `spawn` on `sock`.
fn client_vs(dir: &Path, name: &str, sock: &Path, mut cmd: Command) {
    let result = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .and_then(|mut peer| {
            let r = connect(sock, &mut peer).and_then(record_client);
            let _ = peer.kill();
            let _ = peer.wait();
            r
        });
    match result {
        Ok(v) => write(dir, "client", name, &v),
        Err(e) => eprintln!("  client/{name}: skipped ({e})"),
    }
    let _ = fs::remove_file(sock);
}

/// A real client (`cmd` with `{url}` replaced) against our server.
fn server_vs(dir: &Path, tmp: &Path, name: &str, cmd: &[&str]) {
    let sock = tmp.join(format!("{name}.sock"));
    let listener = match UnixListener::bind(&sock) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("  server/{name}: skipped ({e})");
            return;
        }
    };
    let url = format!("nbd+unix:///fuzz?socket={}", sock.display());
    let args: Vec<String> = cmd[1..].iter().map(|a| a.replace("{url}", &url)).collect();
    let child = Command::new(cmd[0])
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    match child {
        Ok(mut child) => {
            let r = record_server(&listener);
            let _ = child.wait();
            match r {
                Ok(v) => write(dir, "server", name, &v),
                Err(e) => eprintln!("  server/{name}: skipped ({e})"),
            }
        }
        Err(e) => eprintln!("  server/{name}: skipped ({e})"),
    }
    let _ = fs::remove_file(&sock);
}

fn main() {
    let dir = env::args_os()
        .nth(1)
        .expect("usage: seeds CORPUS_DIR (e.g. host-tools/nbd/fuzz/corpus)");
    let dir = PathBuf::from(dir);
    let tmp = env::temp_dir().join(format!("mgear-nbd-seeds-{}", std::process::id()));
    fs::create_dir_all(&tmp).expect("temporary directory");

    // client <- qemu-nbd: a qcow2 with data, a hole and dirty bitmap b0.
    let qcow = tmp.join("d.qcow2");
    let q = qcow.to_str().expect("utf-8 temp path");
    let made = run("qemu-img", &["create", "-q", "-f", "qcow2", q, "1M"])
        .and_then(|_| run("qemu-io", &["-f", "qcow2", "-c", "write -P 0x55 0 64k", q]))
        .and_then(|_| run("qemu-img", &["bitmap", "--add", "-f", "qcow2", q, "b0"]))
        .and_then(|_| {
            run(
                "qemu-io",
                &["-f", "qcow2", "-c", "write -P 0x66 512k 4k", q],
            )
        });
    let sock = tmp.join("qemu-nbd.sock");
    match made {
        Ok(()) => {
            let mut cmd = Command::new("qemu-nbd");
            cmd.args(["-f", "qcow2", "-x", "fuzz", "-B", "b0", "-k"])
                .arg(&sock)
                .arg(&qcow);
            client_vs(&dir, "qemu-nbd", &sock, cmd);
        }
        Err(e) => eprintln!("  client/qemu-nbd: skipped ({e})"),
    }
    // client <- nbdkit (no dirty bitmaps: the client gets a refusal).
    let sock = tmp.join("nbdkit.sock");
    let mut cmd = Command::new("nbdkit");
    cmd.args(["-f", "-e", "fuzz", "-U"])
        .arg(&sock)
        .args(["memory", "1M"]);
    client_vs(&dir, "nbdkit", &sock, cmd);
    // client <- our server.
    let sock = tmp.join("ours.sock");
    match UnixListener::bind(&sock) {
        Ok(listener) => {
            let server = thread::spawn(move || {
                if let Ok((s, _)) = listener.accept() {
                    let r = s.try_clone();
                    if let Ok(r) = r {
                        let _ = serve_stream(r, s, "fuzz", &Disk::new(), "seed");
                    }
                }
            });
            match UnixStream::connect(&sock).and_then(record_client) {
                Ok(v) => write(&dir, "client", "mgear-nbd", &v),
                Err(e) => eprintln!("  client/mgear-nbd: skipped ({e})"),
            }
            let _ = server.join();
        }
        Err(e) => eprintln!("  client/mgear-nbd: skipped ({e})"),
    }

    // server <- real clients.
    server_vs(&dir, &tmp, "nbdinfo", &["nbdinfo", "{url}"]);
    server_vs(&dir, &tmp, "nbdinfo-map", &["nbdinfo", "--map", "{url}"]);
    server_vs(&dir, &tmp, "nbdinfo-list", &["nbdinfo", "--list", "{url}"]);
    server_vs(
        &dir,
        &tmp,
        "qemu-io",
        &[
            "qemu-io",
            "-f",
            "raw",
            "-c",
            "read 0 4k",
            "-c",
            "write -P 7 4k 8k",
            "-c",
            "write -z 16k 4k",
            "-c",
            "flush",
            "{url}",
        ],
    );
    server_vs(
        &dir,
        &tmp,
        "qemu-img-map",
        &["qemu-img", "map", "-f", "raw", "--output=json", "{url}"],
    );
    let copy = tmp.join("copy.raw");
    let copy = copy.to_str().expect("utf-8 temp path");
    // One connection: our recorder accepts only one.
    server_vs(
        &dir,
        &tmp,
        "nbdcopy",
        &["nbdcopy", "--connections=1", "{url}", copy],
    );
    // server <- our client.
    let sock = tmp.join("ourclient.sock");
    match UnixListener::bind(&sock) {
        Ok(listener) => {
            let client = thread::spawn({
                let sock = sock.clone();
                move || UnixStream::connect(&sock).and_then(record_client)
            });
            match record_server(&listener) {
                Ok(v) => write(&dir, "server", "mgear-nbd", &v),
                Err(e) => eprintln!("  server/mgear-nbd: skipped ({e})"),
            }
            let _ = client.join();
        }
        Err(e) => eprintln!("  server/mgear-nbd: skipped ({e})"),
    }
    let _ = fs::remove_dir_all(&tmp);

    let urls = [
        "nbd://localhost/disk",
        "nbd://192.0.2.7:10809/",
        "nbd://[::1]:1234/exp%20name",
        "nbd://host",
        "nbd+unix:///fuzz?socket=/run/appliance.sock",
        "nbd+unix:///?socket=%2Frun%2Fa%20b.sock",
        "nbds://host/tls",
    ];
    for (i, u) in urls.iter().enumerate() {
        write(&dir, "url", &format!("{i:02}"), u.as_bytes());
    }
    println!("nbd seeds written to {}", dir.display());
}
