//! Our client against our server (`mgear-nbd-proto`'s export side, what
//! the appliance simulator serves its medium with): every command, large
//! pipelined transfers, refusals, concurrent TCP clients, stopping, and a
//! server that keeps serving after garbage. Interop with qemu-nbd, nbdkit
//! and qemu-img is in tests/tests/e2e/nbd_interop.rs.

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};

use mgear_nbd::proto::EPERM;
use mgear_nbd::{Client, ConnectOptions, Error, NbdUrl, BASE_ALLOCATION};
use mgear_nbd_proto::testing::{MemExport as Mem, XorShift};
use mgear_nbd_proto::{serve_tcp, serve_unix};

fn opts(ctx: &[&str]) -> ConnectOptions {
    ConnectOptions {
        meta_contexts: ctx.iter().map(|s| s.to_string()).collect(),
        read_only: false,
    }
}

#[test]
fn unix_round_trip_of_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let mem = Mem::new(1 << 20);
    let srv = serve_unix(&dir.path().join("s"), "medium", mem.clone()).unwrap();
    let mut c = Client::connect(&srv.url(), &opts(&[BASE_ALLOCATION])).unwrap();
    assert_eq!(c.size(), 1 << 20);
    assert!(!c.read_only());

    let mut buf = vec![0u8; 5000];
    c.read_at(1000, &mut buf).unwrap();
    assert_eq!(buf, mem.snapshot()[1000..6000]);

    c.write_at(4095, b"hello across a block boundary").unwrap();
    c.write_zeroes(100_000, 70_000).unwrap();
    c.flush().unwrap();
    assert!(mem.flushes() >= 1);
    let snap = mem.snapshot();
    assert_eq!(&snap[4095..4124], b"hello across a block boundary");
    assert!(snap[100_000..170_000].iter().all(|&b| b == 0));
    assert_ne!(snap[99_999], 0);

    assert_eq!(
        c.allocated_ranges(0, 1 << 20).unwrap(),
        vec![(0, 1 << 20, true, false)]
    );
    c.disconnect().unwrap();
    srv.stop();
    assert!(!dir.path().join("s").exists());
}

#[test]
fn large_pipelined_transfers_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let mem = Mem::new(8 << 20);
    let srv = serve_unix(&dir.path().join("s"), "m", mem.clone()).unwrap();
    let mut c = Client::connect(&srv.url(), &opts(&[])).unwrap();
    let big: Vec<u8> = (0..(5u32 << 20) + 3).map(|i| (i % 239) as u8).collect();
    c.write_at(1, &big).unwrap();
    assert!(mem.snapshot()[1..big.len() + 1] == big[..]);
    let mut back = vec![0u8; big.len()];
    c.read_at(1, &mut back).unwrap();
    assert!(back == big);

    // A refusal in the middle of a window is reported, and the
    // connection stays usable.
    mem.set_writable(false);
    let e = c.write_at(0, &big).unwrap_err();
    assert!(matches!(e, Error::Command { code: EPERM, .. }), "{e}");
    c.read_at(1, &mut back[..4096]).unwrap();
    assert!(back[..4096] == big[..4096]);
}

#[test]
fn writes_refused_with_eperm_when_backend_turns_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let mem = Mem::new(4096);
    let srv = serve_unix(&dir.path().join("s"), "m", mem.clone()).unwrap();
    let mut c = Client::connect(&srv.url(), &opts(&[])).unwrap();
    mem.set_writable(false);
    let e = c.write_at(0, b"x").unwrap_err();
    assert!(matches!(e, Error::Command { code: EPERM, .. }), "{e}");
    // Still in step after the refusal.
    let mut b = [0u8; 4];
    c.read_at(0, &mut b).unwrap();
    // A new client is told read-only at handshake and refuses locally.
    let mut c2 = Client::connect(&srv.url(), &opts(&[])).unwrap();
    assert!(c2.read_only());
    assert!(matches!(c2.write_at(0, b"x"), Err(Error::ReadOnly { .. })));
}

#[test]
fn tcp_serves_concurrent_clients_and_names_unknown_exports() {
    let mem = Mem::new(256 * 1024);
    let srv = serve_tcp("127.0.0.1:0".parse().unwrap(), "disk", mem.clone()).unwrap();
    let url = srv.url();
    let workers: Vec<_> = (0..4u8)
        .map(|i| {
            let url = url.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect(&url, &opts(&[])).unwrap();
                let data = vec![i + 1; 65536];
                c.write_at(u64::from(i) * 65536, &data).unwrap();
                let mut back = vec![0u8; 65536];
                c.read_at(u64::from(i) * 65536, &mut back).unwrap();
                assert_eq!(back, data);
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let snap = mem.snapshot();
    for i in 0..4usize {
        assert!(snap[i * 65536..(i + 1) * 65536]
            .iter()
            .all(|&b| b == i as u8 + 1));
    }
    let NbdUrl::Tcp { host, port, .. } = url else {
        panic!("tcp url expected")
    };
    let wrong = NbdUrl::Tcp {
        host,
        port,
        export: "nope".into(),
    };
    let e = Client::connect(&wrong, &opts(&[])).unwrap_err();
    assert!(e.to_string().contains("no export 'nope'"), "{e}");
    assert!(e.to_string().contains("'disk'"), "{e}");
}

#[test]
fn stop_closes_connected_clients() {
    let dir = tempfile::tempdir().unwrap();
    let srv = serve_unix(&dir.path().join("s"), "m", Mem::new(4096)).unwrap();
    let mut c = Client::connect(&srv.url(), &opts(&[])).unwrap();
    srv.stop();
    let mut b = [0u8; 4];
    assert!(c.read_at(0, &mut b).is_err());
}

#[test]
fn stop_returns_even_if_the_socket_file_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let srv = serve_unix(&path, "m", Mem::new(512)).unwrap();
    std::fs::remove_file(&path).unwrap();
    srv.stop();
    // And a server bound over a stale socket file replaces it.
    let srv = serve_unix(&path, "m", Mem::new(512)).unwrap();
    // Dropping a listener leaves its socket file behind.
    drop(UnixListener::bind(dir.path().join("stale")).unwrap());
    assert!(dir.path().join("stale").exists());
    let again = serve_unix(&dir.path().join("stale"), "m", Mem::new(512)).unwrap();
    Client::connect(&again.url(), &opts(&[])).unwrap();
    drop(again);
    drop(srv);
}

#[test]
fn garbage_on_the_socket_leaves_the_server_serving() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let srv = serve_unix(&path, "m", Mem::new(4096)).unwrap();
    let mut rng = XorShift(42);
    for _ in 0..20 {
        let mut s = UnixStream::connect(&path).unwrap();
        let junk: Vec<u8> = (0..rng.below(2000)).map(|_| rng.next() as u8).collect();
        // The server may hang up mid-write; that is its right.
        let _ = s.write_all(&junk);
    }
    let mut c = Client::connect(&srv.url(), &opts(&[])).unwrap();
    let mut b = [0u8; 8];
    c.read_at(0, &mut b).unwrap();
    assert_eq!(b, [0, 7, 14, 21, 28, 35, 42, 49]);
}

#[test]
fn write_behind_round_trips_and_reports_a_refusal_on_the_next_call() {
    let dir = tempfile::tempdir().unwrap();
    let mem = Mem::new(8 << 20);
    let srv = serve_unix(&dir.path().join("s"), "m", mem.clone()).unwrap();
    let mut c = Client::connect(&srv.url(), &opts(&[])).unwrap();
    c.set_write_behind(2 << 20).unwrap();
    // Many unaligned writes, more than the window, some overwriting
    // earlier ones still in flight: the export ends up as if each had
    // waited for its reply.
    let mut want = mem.snapshot();
    let mut rng = XorShift(7);
    for i in 0..64u32 {
        let len = 1 + rng.below(600 * 1024);
        let at = rng.below(want.len() - len);
        let data: Vec<u8> = (0..len).map(|k| (k as u32 * 31 + i) as u8).collect();
        c.write_at(at as u64, &data).unwrap();
        want[at..at + len].copy_from_slice(&data);
    }
    let mut back = vec![0u8; want.len()];
    c.read_at(0, &mut back).unwrap();
    assert!(back == want);
    c.flush().unwrap();
    assert!(mem.snapshot() == want);

    // A refused write returns Ok; the next call reports it, and the
    // connection stays in step.
    mem.set_writable(false);
    c.write_at(4096, b"refused").unwrap();
    let e = c.read_at(0, &mut back[..16]).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Command {
                code: EPERM,
                offset: 4096,
                ..
            }
        ),
        "{e}"
    );
    c.read_at(4096, &mut back[..7]).unwrap();
    assert_eq!(back[..7], want[4096..4103]);
    c.disconnect().unwrap();
}
