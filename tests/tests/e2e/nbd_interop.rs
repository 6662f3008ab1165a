//! Interoperability of `mgear-nbd` with real NBD peers: our client against
//! `qemu-nbd` (qcow2, vmdk, vhdx; Unix socket and TCP) and `nbdkit`, and our
//! server (`mgear-nbd-proto`, the simulator's export) against `qemu-img`, `qemu-io`, `nbdinfo` and `nbdcopy`.
//!
//! Needs qemu-utils, nbdkit and libnbd-bin installed. Every peer runs on a
//! Unix socket in a temp dir or on 127.0.0.1 with a free port, and is killed
//! when its guard drops.

use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mgear_nbd::{Client, ConnectOptions, Error, NbdFile, NbdUrl, BASE_ALLOCATION};
use mgear_nbd_proto::{serve_tcp, serve_unix, BlockBackend};

const MIB: u64 = 1024 * 1024;

/// Kills and reaps a child process when dropped.
struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free local port")
        .port()
}

/// Runs a tool to completion; panics with its output if it fails.
fn run(cmd: &str, args: &[&str]) -> Output {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e} (is it installed?)"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Starts a server process and waits until `url` accepts an NBD handshake.
fn spawn_peer(cmd: &str, args: &[&str], url: &NbdUrl) -> Peer {
    let child = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd}: {e} (is it installed?)"));
    let mut peer = Peer(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(c) = Client::connect(url, &ConnectOptions::default()) {
            c.disconnect().expect("clean disconnect");
            return peer;
        }
        if let Ok(Some(status)) = peer.0.try_wait() {
            panic!("{cmd} {args:?} exited early: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "{cmd} {args:?} never became ready"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn unix_url(socket: &Path, export: &str) -> NbdUrl {
    NbdUrl::Unix {
        socket: socket.to_path_buf(),
        export: export.to_string(),
    }
}

fn tcp_url(port: u16, export: &str) -> NbdUrl {
    NbdUrl::Tcp {
        host: "127.0.0.1".into(),
        port,
        export: export.to_string(),
    }
}

fn with_contexts(ctx: &[&str]) -> ConnectOptions {
    ConnectOptions {
        meta_contexts: ctx.iter().map(|s| s.to_string()).collect(),
        read_only: false,
    }
}

/// Reads the whole export through our client.
fn read_all(c: &mut Client) -> Vec<u8> {
    let mut buf = vec![0u8; c.size() as usize];
    c.read_at(0, &mut buf).expect("read whole export");
    buf
}

/// Checks an allocation map tiles `[0, size)` and that "zero" ranges really are zeroes.
fn check_map(map: &[(u64, u64, bool, bool)], size: u64, raw: &[u8]) {
    let mut next = 0;
    for &(off, len, _data, zero) in map {
        assert_eq!(off, next, "allocation map has a gap or overlap: {map:?}");
        assert!(len > 0);
        if zero {
            assert!(
                raw[off as usize..(off + len) as usize]
                    .iter()
                    .all(|&b| b == 0),
                "range {off}+{len} reported zero but holds data"
            );
        }
        next = off + len;
    }
    assert_eq!(next, size, "allocation map does not cover the export");
}

fn is_data_at(map: &[(u64, u64, bool, bool)], pos: u64) -> bool {
    map.iter()
        .find(|&&(o, l, _, _)| o <= pos && pos < o + l)
        .map(|&(_, _, data, zero)| data && !zero)
        .unwrap_or_else(|| panic!("{pos} not covered by {map:?}"))
}

fn is_hole_at(map: &[(u64, u64, bool, bool)], pos: u64) -> bool {
    map.iter()
        .find(|&&(o, l, _, _)| o <= pos && pos < o + l)
        .map(|&(_, _, data, _)| !data)
        .unwrap_or_else(|| panic!("{pos} not covered by {map:?}"))
}

/// A 16 MiB image of `fmt` with two written patterns, and its raw conversion.
fn make_image(dir: &Path, fmt: &str) -> (PathBuf, Vec<u8>) {
    let img = dir.join(format!("disk.{fmt}"));
    let img_s = img.to_str().expect("utf-8 temp path");
    run("qemu-img", &["create", "-q", "-f", fmt, img_s, "16M"]);
    run(
        "qemu-io",
        &[
            "-f",
            fmt,
            "-c",
            "write -P 0xab 1M 192k",
            "-c",
            "write -P 0x5c 13M 4k",
            img_s,
        ],
    );
    let raw = dir.join(format!("disk-{fmt}.raw"));
    run(
        "qemu-img",
        &[
            "convert",
            "-f",
            fmt,
            "-O",
            "raw",
            img_s,
            raw.to_str().expect("utf-8"),
        ],
    );
    (img, std::fs::read(&raw).expect("read converted image"))
}

#[test]
fn client_reads_qemu_nbd_exports_like_qemu_img_convert() {
    let dir = tempfile::tempdir().unwrap();
    for (fmt, tcp) in [
        ("qcow2", false),
        ("qcow2", true),
        ("vmdk", true),
        ("vhdx", false),
    ] {
        let (img, raw) = make_image(dir.path(), fmt);
        assert_eq!(raw[MIB as usize], 0xab);
        let sock = dir.path().join(format!("{fmt}-{tcp}.sock"));
        let port = free_port();
        let port_s = port.to_string();
        let (url, mut args) = if tcp {
            (
                tcp_url(port, "disk"),
                vec!["-b", "127.0.0.1", "-p", port_s.as_str()],
            )
        } else {
            (unix_url(&sock, "disk"), vec!["-k", sock.to_str().unwrap()])
        };
        args.extend(["-t", "-r", "-x", "disk", "-f", fmt, img.to_str().unwrap()]);
        let _peer = spawn_peer("qemu-nbd", &args, &url);

        let mut c = Client::connect(&url, &with_contexts(&[BASE_ALLOCATION])).unwrap();
        assert_eq!(c.size(), 16 * MIB, "{fmt}");
        assert!(c.read_only(), "qemu-nbd -r must advertise read-only");
        let got = read_all(&mut c);
        assert!(
            got == raw,
            "{fmt} (tcp={tcp}): NBD read differs from qemu-img convert"
        );

        let map = c.allocated_ranges(0, c.size()).unwrap();
        check_map(&map, c.size(), &raw);
        assert!(
            is_data_at(&map, MIB),
            "{fmt}: written range not data: {map:?}"
        );
        assert!(
            is_data_at(&map, 13 * MIB),
            "{fmt}: written range not data: {map:?}"
        );
        if fmt != "vhdx" {
            // vhdx allocates in blocks of many MiB; the others in <= 64 KiB.
            assert!(
                is_hole_at(&map, 8 * MIB),
                "{fmt}: unwritten range not a hole: {map:?}"
            );
        }
        // A sub-range walk agrees with the whole-disk walk.
        let part = c.allocated_ranges(MIB + 100, 200_000).unwrap();
        assert_eq!(part.first().map(|r| r.0), Some(MIB + 100));
        assert_eq!(part.iter().map(|r| r.1).sum::<u64>(), 200_000);
        assert!(matches!(c.write_at(0, b"x"), Err(Error::ReadOnly { .. })));
        c.disconnect().unwrap();
    }
}

#[test]
fn dirty_bitmap_gives_exactly_the_written_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("d.qcow2");
    let img_s = img.to_str().unwrap();
    run("qemu-img", &["create", "-q", "-f", "qcow2", img_s, "32M"]);
    run("qemu-io", &["-f", "qcow2", "-c", "write -P 1 0 2M", img_s]);
    run(
        "qemu-img",
        &["bitmap", "--add", "--enable", "-g", "65536", img_s, "b0"],
    );
    run(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 2 1M 4k", // -> [1M, 1M+64k)
            "-c",
            "write -P 3 3132k 8k", // crosses 3M+64k -> [3M, 3M+128k)
            "-c",
            "write -P 4 20M 128k", // -> [20M, 20M+128k)
            "-c",
            "write -P 5 20608k 64k", // 20M+128k, adjacent -> merged
            img_s,
        ],
    );
    let sock = dir.path().join("s");
    let url = unix_url(&sock, "");
    let _peer = spawn_peer(
        "qemu-nbd",
        &[
            "-t",
            "-r",
            "-B",
            "b0",
            "-f",
            "qcow2",
            "-k",
            sock.to_str().unwrap(),
            img_s,
        ],
        &url,
    );
    let ctx = "qemu:dirty-bitmap:b0";
    let mut c = Client::connect(&url, &with_contexts(&[BASE_ALLOCATION, ctx])).unwrap();
    assert_eq!(
        c.meta_contexts(),
        &[BASE_ALLOCATION.to_string(), ctx.to_string()]
    );
    let dirty = c.dirty_ranges("b0", 0, c.size()).unwrap();
    assert_eq!(
        dirty,
        vec![(MIB, 65536), (3 * MIB, 131072), (20 * MIB, 196608)]
    );
    // A window starting mid-range is clipped to the window.
    assert_eq!(
        c.dirty_ranges("b0", 3 * MIB + 4096, MIB).unwrap(),
        vec![(3 * MIB + 4096, 131072 - 4096)]
    );
    drop(c);

    // Asking for a bitmap the server does not export says how to fix it.
    let e = Client::connect(&url, &with_contexts(&["qemu:dirty-bitmap:other"])).unwrap_err();
    assert!(matches!(e, Error::MetaContextUnsupported { .. }), "{e}");
    assert!(e.to_string().contains("-B other"), "{e}");
}

#[test]
fn client_reads_and_writes_nbdkit_memory_and_file() {
    let dir = tempfile::tempdir().unwrap();

    // nbdkit memory over a Unix socket: writes, zeroes, holes.
    let sock = dir.path().join("mem.sock");
    let url = unix_url(&sock, "");
    let _mem = spawn_peer(
        "nbdkit",
        &[
            "-f",
            "--exit-with-parent",
            "-U",
            sock.to_str().unwrap(),
            "memory",
            "4M",
        ],
        &url,
    );
    let mut c = Client::connect(&url, &with_contexts(&[BASE_ALLOCATION])).unwrap();
    assert_eq!(c.size(), 4 * MIB);
    assert!(!c.read_only());
    let pattern: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    c.write_at(MIB + 7, &pattern).unwrap();
    c.flush().unwrap();
    let mut back = vec![0u8; pattern.len()];
    c.read_at(MIB + 7, &mut back).unwrap();
    assert!(back == pattern);
    c.write_zeroes(MIB + 7, 1000).unwrap();
    c.read_at(MIB + 7, &mut back[..1000]).unwrap();
    assert!(back[..1000].iter().all(|&b| b == 0));
    let map = c.allocated_ranges(0, c.size()).unwrap();
    let raw = read_all(&mut c);
    check_map(&map, c.size(), &raw);
    assert!(is_hole_at(&map, 3 * MIB), "{map:?}");
    assert!(is_data_at(&map, MIB + 200_000), "{map:?}");
    c.disconnect().unwrap();

    // nbdkit file over TCP: the file is what we read, and our writes land in it.
    let file = dir.path().join("f.img");
    let content: Vec<u8> = (0..2 * MIB).map(|i| (i * 31 % 256) as u8).collect();
    std::fs::write(&file, &content).unwrap();
    let port = free_port();
    let url = tcp_url(port, "");
    let _file_peer = spawn_peer(
        "nbdkit",
        &[
            "-f",
            "--exit-with-parent",
            "-i",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "file",
            &format!("file={}", file.display()),
        ],
        &url,
    );
    let c = Client::connect(&url, &ConnectOptions::default()).unwrap();
    let mut f = NbdFile::new(c);
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut all = Vec::new();
    f.read_to_end(&mut all).unwrap();
    assert!(all == content, "nbdkit file export differs from the file");
    f.seek(SeekFrom::Start(4096)).unwrap();
    f.write_all(b"written through NbdFile").unwrap();
    f.flush().unwrap();
    f.into_inner().disconnect().unwrap();
    let on_disk = std::fs::read(&file).unwrap();
    assert_eq!(&on_disk[4096..4096 + 23], b"written through NbdFile");
}

/// A memory disk for our server, with two independent write switches.
struct MemDisk {
    data: Mutex<Vec<u8>>,
    /// Advertised at handshake.
    writable: AtomicBool,
    /// Writes fail with PermissionDenied (a medium sealed mid-session).
    sealed: AtomicBool,
}

impl MemDisk {
    fn new(data: Vec<u8>) -> Arc<MemDisk> {
        Arc::new(MemDisk {
            data: Mutex::new(data),
            writable: AtomicBool::new(true),
            sealed: AtomicBool::new(false),
        })
    }
    fn bytes(&self) -> Vec<u8> {
        self.data.lock().unwrap().clone()
    }
}

impl BlockBackend for MemDisk {
    fn size(&self) -> u64 {
        self.data.lock().unwrap().len() as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let d = self.data.lock().unwrap();
        let o = offset as usize;
        buf.copy_from_slice(&d[o..o + buf.len()]);
        Ok(())
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        if self.sealed.load(Ordering::SeqCst) {
            return Err(io::Error::new(io::ErrorKind::PermissionDenied, "sealed"));
        }
        let mut d = self.data.lock().unwrap();
        let o = offset as usize;
        d[o..o + data.len()].copy_from_slice(data);
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    fn writable(&self) -> bool {
        self.writable.load(Ordering::SeqCst)
    }
}

fn patterned(len: u64) -> Vec<u8> {
    (0..len).map(|i| ((i / 512) as u8) ^ (i as u8)).collect()
}

#[test]
fn our_server_serves_qemu_img_nbdinfo_and_nbdcopy() {
    let dir = tempfile::tempdir().unwrap();
    let disk = MemDisk::new(patterned(6 * MIB));
    let sock = dir.path().join("medium.sock");
    let srv = serve_unix(&sock, "medium", disk.clone()).unwrap();
    let url = srv.url().to_string();
    assert!(url.starts_with("nbd+unix:///medium?socket="), "{url}");

    let info = run("qemu-img", &["info", "--output=json", &url]);
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(
        info.contains(&format!("\"virtual-size\": {}", 6 * MIB)),
        "{info}"
    );

    let out = dir.path().join("convert.raw");
    run(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            &url,
            out.to_str().unwrap(),
        ],
    );
    assert!(
        std::fs::read(&out).unwrap() == disk.bytes(),
        "qemu-img convert differs"
    );

    let info = run("nbdinfo", &["--json", &url]);
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(
        info.contains(&format!("\"export-size\": {}", 6 * MIB)),
        "{info}"
    );
    assert!(info.contains("\"export-name\": \"medium\""), "{info}");
    assert!(info.contains("base:allocation"), "{info}");
    // Export listing (NBD_OPT_LIST, then NBD_OPT_INFO per export).
    let list = run("nbdinfo", &["--list", "--json", &url]);
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(list.contains("\"export-name\": \"medium\""), "{list}");
    let list = run("qemu-nbd", &["--list", "-k", sock.to_str().unwrap()]);
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(list.contains("export: 'medium'"), "{list}");
    assert!(list.contains(&format!("size:  {}", 6 * MIB)), "{list}");
    let map = run("nbdinfo", &["--map", &url]);
    let map = String::from_utf8_lossy(&map.stdout);
    assert!(map.trim_start().starts_with('0'), "{map}");
    assert!(
        map.contains(&(6 * MIB).to_string()) && map.contains("data"),
        "{map}"
    );

    let copy = dir.path().join("copy.raw");
    run("nbdcopy", &[&url, copy.to_str().unwrap()]);
    assert!(
        std::fs::read(&copy).unwrap() == disk.bytes(),
        "nbdcopy (read) differs"
    );

    // nbdcopy writing into our server (several connections at once).
    let src = dir.path().join("src.raw");
    let fresh: Vec<u8> = patterned(6 * MIB)
        .iter()
        .map(|b| b.wrapping_add(99))
        .collect();
    std::fs::write(&src, &fresh).unwrap();
    run("nbdcopy", &[src.to_str().unwrap(), &url]);
    assert!(disk.bytes() == fresh, "nbdcopy (write) did not land");
    srv.stop();
}

#[test]
fn our_server_takes_qemu_io_writes_and_refuses_them_when_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let disk = MemDisk::new(vec![0u8; 2 * MIB as usize]);
    let port = free_port();
    let srv = serve_tcp(
        format!("127.0.0.1:{port}").parse().unwrap(),
        "m",
        disk.clone(),
    )
    .unwrap();
    let url = srv.url().to_string();
    assert_eq!(url, format!("nbd://127.0.0.1:{port}/m"));

    run(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0x77 4096 8192", &url],
    );
    let b = disk.bytes();
    assert!(b[4096..12288].iter().all(|&x| x == 0x77));
    assert_eq!(b[4095], 0);
    assert_eq!(b[12288], 0);

    // Sealed while writable was advertised: the write itself gets EPERM.
    disk.sealed.store(true, Ordering::SeqCst);
    let out = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write -P 0x11 0 4096", &url])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("Operation not permitted"), "{text}");
    assert!(disk.bytes()[..4096].iter().all(|&x| x == 0));

    // Read-only at handshake: qemu-io cannot even open it for writing.
    disk.writable.store(false, Ordering::SeqCst);
    let out = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write -P 0x11 0 4096", &url])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "qemu-io opened a read-only export for writing: {text}"
    );
    assert!(text.contains("Permission denied"), "{text}");
    assert!(disk.bytes()[..4096].iter().all(|&x| x == 0));
    // Reads still work read-only.
    let out = dir.path().join("ro.raw");
    run(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            &url,
            out.to_str().unwrap(),
        ],
    );
    assert!(std::fs::read(&out).unwrap() == disk.bytes());
}

#[test]
fn fatfs_opens_a_fat32_medium_through_our_server_and_nbd_file() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("medium.img");
    let img_s = img.to_str().unwrap();
    run("mkfs.fat", &["-F", "32", "-C", img_s, "40000"]);
    let note = dir.path().join("NOTE.TXT");
    std::fs::write(&note, b"put there by mtools").unwrap();
    run(
        "mcopy",
        &["-i", img_s, note.to_str().unwrap(), "::NOTE.TXT"],
    );

    let disk = MemDisk::new(std::fs::read(&img).unwrap());
    let srv = serve_unix(&dir.path().join("m.sock"), "medium", disk.clone()).unwrap();
    let client = Client::connect(&srv.url(), &ConnectOptions::default()).unwrap();
    let fs = fatfs::FileSystem::new(NbdFile::new(client), fatfs::FsOptions::new()).unwrap();
    assert_eq!(fs.fat_type(), fatfs::FatType::Fat32);
    let root = fs.root_dir();
    let mut text = String::new();
    root.open_file("NOTE.TXT")
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    assert_eq!(text, "put there by mtools");
    let mut f = root.create_file("NEW.BIN").unwrap();
    let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 241) as u8).collect();
    f.write_all(&payload).unwrap();
    f.flush().unwrap();
    drop(f);
    drop(root);
    fs.unmount().unwrap();
    srv.stop();

    // The writes reached the backend: the medium is consistent and holds the file.
    std::fs::write(&img, disk.bytes()).unwrap();
    run("fsck.fat", &["-n", img_s]);
    let back = dir.path().join("back.bin");
    run("mcopy", &["-i", img_s, "::NEW.BIN", back.to_str().unwrap()]);
    assert!(std::fs::read(&back).unwrap() == payload);
}
