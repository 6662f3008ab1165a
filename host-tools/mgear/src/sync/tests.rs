//! In-process scenarios for sync: a real target session on 127.0.0.1 and a
//! real source run, with faults injected into the connection.

use std::io::{self, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use image_format::DataKey;

use super::session::IdKey;
use super::source::{self, Conn, Disk, Plan};
use super::target::{self, Applied, Served, ServedVolume as Volume};

/// An existing raw file as the volume `serve` writes in place.
fn in_place(p: &std::path::Path) -> Box<dyn mgear_volume::Volume> {
    Box::new(mgear_volume::FileVolume::open_in_place(p).unwrap())
}
use crate::exit::{code_of, FOUND, USAGE};
use crate::ratelimit::Bucket;
use crate::source::FileSource;

const CS: u32 = 65536;
const CHUNKS: u64 = 40;
const SIZE: u64 = CHUNKS * CS as u64 + 1000;

/// Incompressible bytes, different per seed.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    image_format::bench::noise(len, seed)
}

struct Fixture {
    _dir: tempfile::TempDir,
    src: PathBuf,
    vol: PathBuf,
    key: DataKey,
    capture_id: [u8; 16],
}

/// A target volume (the "ingested" disk) and a source that differs in `changed` chunks.
fn fixture(changed: &[u64]) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut disk = noise(1, SIZE as usize);
    // Some zero chunks, as real disks have.
    for b in &mut disk[5 * CS as usize..7 * CS as usize] {
        *b = 0;
    }
    let vol = dir.path().join("vol.raw");
    std::fs::write(&vol, &disk).unwrap();
    for &c in changed {
        let at = (c * CS as u64) as usize;
        let end = (at + CS as usize).min(disk.len());
        let fresh = noise(100 + c, end - at);
        disk[at..end].copy_from_slice(&fresh);
    }
    let src = dir.path().join("disk.raw");
    std::fs::write(&src, &disk).unwrap();
    Fixture {
        _dir: dir,
        src,
        vol,
        key: DataKey::from_bytes([7; 32]),
        capture_id: [9; 16],
    }
}

impl Fixture {
    fn served(&self, name: &str) -> Served {
        Served {
            name: name.into(),
            key: self.key.clone(),
            capture_id: self.capture_id,
            chunk_size: CS,
            volume_size: SIZE,
            trust: target::Trust {
                keys: Vec::new(),
                allow_untrusted: true,
            },
            fence: None,
        }
    }

    fn volume(&self) -> Volume {
        Volume::open(
            in_place(&self.vol.clone()),
            SIZE,
            CS,
            IdKey::derive(&self.key, &self.capture_id),
        )
        .unwrap()
    }

    fn plan(&self, key: DataKey) -> Plan {
        Plan {
            name: "web01".into(),
            key,
            bitmap: None,
            rate: None,
            retries: 3,
            retry_wait: Duration::from_millis(10),
            peer: "test target".into(),
            capture_id: None,
            signer: None,
            other_keys: Vec::new(),
            force: false,
        }
    }

    fn disk(&self) -> Disk {
        Box::new(FileSource::open(self.src.clone()).unwrap())
    }
}

/// Serve `sessions` connections; returns each session's result and applied counts.
fn serve(
    listener: TcpListener,
    served: Served,
    vol: Volume,
    sessions: usize,
) -> JoinHandle<Vec<(Result<(), String>, Applied)>> {
    std::thread::spawn(move || {
        let vol = Mutex::new(vol);
        let mut out = Vec::new();
        for _ in 0..sessions {
            let (conn, peer) = listener.accept().unwrap();
            let mut applied = Applied {
                chunks: 0,
                bytes: 0,
            };
            let r = target::session(
                &mut &conn,
                &conn,
                &peer.to_string(),
                &served,
                &vol,
                &mut applied,
                &mut || {},
            );
            vol.lock().unwrap().sync().unwrap();
            out.push((r.map_err(|e| format!("{e:#}")), applied));
        }
        out
    })
}

fn listen() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap().to_string();
    (l, a)
}

#[test]
fn sync_sends_only_changed_chunks_and_target_equals_source() {
    let changed = [0, 3, 17, CHUNKS]; // CHUNKS is the short last chunk
    let fx = fixture(&changed);
    let (l, addr) = listen();
    let server = serve(l, fx.served("web01"), fx.volume(), 2);
    let mut disk = fx.disk();
    let stats = source::run(&fx.plan(fx.key.clone()), &mut disk, &mut || {
        source::tcp(&addr)
    })
    .unwrap();
    assert!(stats.verified);
    assert_eq!(stats.chunks_sent, changed.len() as u64);
    assert_eq!(stats.bytes_read, SIZE);
    assert_eq!(stats.chunk_bytes_sent, 3 * CS as u64 + 1000);
    // Little more than the changed data crosses the wire (the id list comes the other way).
    assert!(
        stats.wire_bytes < stats.chunk_bytes_sent + 4096,
        "{stats:?}"
    );
    assert_eq!(
        std::fs::read(&fx.vol).unwrap(),
        std::fs::read(&fx.src).unwrap()
    );

    // Nothing left to send.
    let again = source::run(&fx.plan(fx.key.clone()), &mut fx.disk(), &mut || {
        source::tcp(&addr)
    })
    .unwrap();
    assert_eq!(again.chunks_sent, 0);
    assert!(again.verified);
    let sessions = server.join().unwrap();
    assert_eq!(sessions[0].1.chunks, changed.len() as u64);
    assert!(sessions.iter().all(|(r, _)| r.is_ok()), "{sessions:?}");
}

/// The source grew while the sync read it: what was sent is the disk at its old size, and the
/// volume is not the source any more. It said "verified", exit 0.
#[test]
fn a_source_resized_during_the_sync_is_no_verified_sync() {
    let fx = fixture(&[3]);
    let (l, addr) = listen();
    let server = serve(l, fx.served("web01"), fx.volume(), 1);
    let mut disk = fx.disk();
    let src = fx.src.clone();
    let e = source::run(&fx.plan(fx.key.clone()), &mut disk, &mut || {
        let mut f = std::fs::OpenOptions::new().append(true).open(&src)?;
        f.write_all(&noise(5, 3000))?;
        source::tcp(&addr)
    })
    .unwrap_err();
    assert_eq!(code_of(&e), crate::exit::IO, "{e:#}");
    assert!(
        e.to_string().contains(&format!(
            "the source grew during the sync, from {SIZE} to {}",
            SIZE + 3000
        )),
        "{e:#}"
    );
    server.join().unwrap();
}

#[test]
fn zeroed_chunks_are_synced() {
    let fx = fixture(&[]);
    let mut disk = std::fs::read(&fx.src).unwrap();
    for b in &mut disk[10 * CS as usize..12 * CS as usize] {
        *b = 0;
    }
    std::fs::write(&fx.src, &disk).unwrap();
    let (l, addr) = listen();
    let server = serve(l, fx.served("web01"), fx.volume(), 1);
    let stats = source::run(&fx.plan(fx.key.clone()), &mut fx.disk(), &mut || {
        source::tcp(&addr)
    })
    .unwrap();
    assert_eq!(stats.chunks_sent, 2);
    assert!(
        stats.wire_bytes < 2048,
        "zero chunks travel as tags only: {stats:?}"
    );
    assert_eq!(std::fs::read(&fx.vol).unwrap(), disk);
    server.join().unwrap();
}

/// A write half that breaks after `left` bytes, like a pulled cable.
struct Cut {
    inner: Box<dyn Write + Send>,
    left: Arc<Mutex<usize>>,
}

impl Write for Cut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut left = self.left.lock().unwrap();
        if *left == 0 {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "cable pulled",
            ));
        }
        let n = buf.len().min(*left);
        let n = self.inner.write(&buf[..n])?;
        *left -= n;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[test]
fn a_dropped_connection_resumes_where_the_target_is() {
    let changed = [2, 4, 8, 9, 20, 30];
    let fx = fixture(&changed);
    let (l, addr) = listen();
    let server = serve(l, fx.served("web01"), fx.volume(), 2);
    let frame = 12 + 45 + CS as usize + 16 + 4;
    // HELLO + PROOF (~150 bytes) and three and a half chunk frames get through.
    let budget = 200 + 3 * frame + frame / 2;
    let mut calls = 0;
    let mut connect = || -> io::Result<Conn> {
        calls += 1;
        let (r, w) = source::tcp(&addr)?;
        if calls == 1 {
            let left = Arc::new(Mutex::new(budget));
            return Ok((r, Box::new(Cut { inner: w, left }) as Box<dyn Write + Send>));
        }
        Ok((r, w))
    };
    let stats = source::run(&fx.plan(fx.key.clone()), &mut fx.disk(), &mut connect).unwrap();
    assert_eq!(stats.attempts, 2);
    assert!(stats.verified);
    // Chunks were read once: the retry compared ids it already had.
    assert_eq!(stats.bytes_read, SIZE);
    assert_eq!(
        std::fs::read(&fx.vol).unwrap(),
        std::fs::read(&fx.src).unwrap()
    );
    let sessions = server.join().unwrap();
    assert!(
        sessions[0].0.is_err(),
        "first session must have broken: {sessions:?}"
    );
    assert_eq!(sessions[0].1.chunks, 3, "{sessions:?}");
    assert!(sessions[1].0.is_ok(), "{sessions:?}");
    assert_eq!(
        sessions[1].1.chunks, 3,
        "only the rest is sent again: {sessions:?}"
    );
}

#[test]
fn wrong_key_unknown_capture_and_strangers_are_clear_errors() {
    let fx = fixture(&[1]);
    let (l, addr) = listen();
    let server = serve(l, fx.served("web01"), fx.volume(), 2);
    let e = source::run(
        &fx.plan(DataKey::from_bytes([8; 32])),
        &mut fx.disk(),
        &mut || source::tcp(&addr),
    )
    .unwrap_err();
    assert!(
        format!("{e:#}").contains("does not open the target's capture web01"),
        "{e:#}"
    );
    assert_eq!(code_of(&e), USAGE);
    let mut plan = fx.plan(fx.key.clone());
    plan.name = "db02".into();
    let e = source::run(&plan, &mut fx.disk(), &mut || source::tcp(&addr)).unwrap_err();
    assert!(
        format!("{e:#}").contains("does not know capture db02: it serves capture web01")
            && format!("{e:#}").contains("send db02's changes to the serve of db02's volume"),
        "{e:#}"
    );
    assert_eq!(code_of(&e), USAGE);
    let sessions = server.join().unwrap();
    // The serve of a set's disk, asked for the set: the disk-by-disk way is named.
    let (l, addr) = listen();
    let server = serve(l, fx.served("vm3.d1"), fx.volume(), 1);
    let mut plan = fx.plan(fx.key.clone());
    plan.name = "vm3".into();
    let e = source::run(&plan, &mut fx.disk(), &mut || source::tcp(&addr)).unwrap_err();
    assert!(
        format!("{e:#}").contains(
            "it serves capture vm3.d1, a disk of machine set vm3; a set is synced disk by disk"
        ),
        "{e:#}"
    );
    assert_eq!(code_of(&e), USAGE);
    server.join().unwrap();
    assert!(
        sessions.iter().all(|(r, a)| r.is_err() && a.chunks == 0),
        "{sessions:?}"
    );
    assert_eq!(
        std::fs::read(&fx.vol).unwrap()[CS as usize..2 * CS as usize],
        noise(1, SIZE as usize)[CS as usize..2 * CS as usize]
    );

    // A peer that speaks something else.
    let (l, addr) = listen();
    let http = std::thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        let _ = c.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
    });
    let e = source::run(&fx.plan(fx.key.clone()), &mut fx.disk(), &mut || {
        source::tcp(&addr)
    })
    .unwrap_err();
    assert!(
        format!("{e:#}").contains("does not speak the MotionGear sync protocol"),
        "{e:#}"
    );
    http.join().unwrap();
}

#[test]
fn target_refuses_tampered_records() {
    // A source with the right key but a corrupting link: flip a byte inside the first CHUNK payload.
    struct Flip {
        inner: Box<dyn Write + Send>,
        seen: usize,
        at: usize,
    }
    impl Write for Flip {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let mut b = buf.to_vec();
            if self.at >= self.seen && self.at < self.seen + b.len() {
                b[self.at - self.seen] ^= 0x40;
            }
            self.inner.write_all(&b)?;
            self.seen += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            self.inner.flush()
        }
    }
    let fx = fixture(&[6]);
    let before = std::fs::read(&fx.vol).unwrap();
    let (l, addr) = listen();
    let server = serve(l, fx.served("web01"), fx.volume(), 1);
    let mut connect = || -> io::Result<Conn> {
        let (r, w) = source::tcp(&addr)?;
        Ok((
            r,
            Box::new(Flip {
                inner: w,
                seen: 0,
                at: 0,
            }) as Box<dyn Write + Send>,
        ))
    };
    // The HELLO magic itself is flipped: the target refuses a stranger. No retries: the
    // listener is gone afterwards and its port may belong to another test by then.
    let mut plan = fx.plan(fx.key.clone());
    plan.retries = 0;
    let e = source::run(&plan, &mut fx.disk(), &mut connect);
    assert!(e.is_err());
    let sessions = server.join().unwrap();
    assert!(
        sessions[0]
            .0
            .as_ref()
            .unwrap_err()
            .contains("does not speak"),
        "{sessions:?}"
    );

    // Now a chunk frame whose ciphertext was changed and the frame CRC recomputed: only the AEAD can tell.
    let (l, addr) = listen();
    let server = serve(l, fx.served("web01"), fx.volume(), 1);
    struct Forge {
        inner: Box<dyn Write + Send>,
    }
    impl Write for Forge {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let mut b = buf.to_vec();
            // Whole frames arrive here (BufWriter passes big frames through; small ones are buffered
            // and flushed frame-aligned in this protocol's call pattern only at flush points), so
            // rewrite big SEALED frames (chunks) found at the start of a write.
            if b.len() > 1000 && &b[..4] == b"MGSY" && b[5] == super::wire::ty::SEALED {
                let n = b.len();
                b[n - 10] ^= 1;
                let crc = crc32fast::hash(&b[..n - 4]);
                b[n - 4..].copy_from_slice(&crc.to_le_bytes());
            }
            self.inner.write_all(&b)?;
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            self.inner.flush()
        }
    }
    let mut connect = || -> io::Result<Conn> {
        let (r, w) = source::tcp(&addr)?;
        Ok((r, Box::new(Forge { inner: w }) as Box<dyn Write + Send>))
    };
    let e = source::run(&fx.plan(fx.key.clone()), &mut fx.disk(), &mut connect).unwrap_err();
    assert!(
        format!("{e:#}").contains("a sealed frame does not authenticate"),
        "{e:#}"
    );
    assert_eq!(code_of(&e), FOUND);
    server.join().unwrap();
    assert_eq!(
        std::fs::read(&fx.vol).unwrap(),
        before,
        "nothing unauthenticated was written"
    );
}

#[test]
fn size_mismatch_is_refused() {
    let fx = fixture(&[]);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&fx.src)
        .unwrap();
    f.set_len(SIZE + CS as u64).unwrap();
    let (l, addr) = listen();
    let server = serve(l, fx.served("web01"), fx.volume(), 1);
    let e = source::run(&fx.plan(fx.key.clone()), &mut fx.disk(), &mut || {
        source::tcp(&addr)
    })
    .unwrap_err();
    assert!(
        format!("{e:#}").contains("sync cannot resize volumes")
            && format!("{e:#}").contains("fix --source"),
        "{e:#}"
    );
    server.join().unwrap();
}

fn site_key(seed: u8) -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
}

#[test]
fn only_sessions_signed_by_a_pinned_site_key_are_applied() {
    let fx = fixture(&[3, 11]);
    let before = std::fs::read(&fx.vol).unwrap();
    let pinned = site_key(1);
    let mut served = fx.served("web01");
    served.trust = target::Trust {
        keys: vec![pinned.verifying_key().to_bytes()],
        allow_untrusted: false,
    };
    let (l, addr) = listen();
    let server = serve(l, served, fx.volume(), 4);
    let attempt = |signer: Option<ed25519_dalek::SigningKey>, key: DataKey| {
        let mut plan = fx.plan(key);
        plan.signer = signer;
        plan.retries = 0;
        source::run(&plan, &mut fx.disk(), &mut || source::tcp(&addr))
    };
    // Unsigned, signed by a key the target does not pin, and the attacker's own
    // data key with a pinned signature: all refused, nothing written.
    let e = attempt(None, fx.key.clone()).unwrap_err();
    assert!(
        format!("{e:#}").contains("did not sign the session"),
        "{e:#}"
    );
    assert_eq!(code_of(&e), FOUND);
    let e = attempt(Some(site_key(2)), fx.key.clone()).unwrap_err();
    assert!(format!("{e:#}").contains("does not pin"), "{e:#}");
    assert_eq!(code_of(&e), FOUND);
    let e = attempt(Some(pinned.clone()), DataKey::from_bytes([8; 32])).unwrap_err();
    assert!(
        format!("{e:#}").contains("does not open the target's capture"),
        "{e:#}"
    );
    assert_eq!(
        std::fs::read(&fx.vol).unwrap(),
        before,
        "refused peers wrote nothing"
    );
    // The pinned site's signed session goes through.
    let stats = attempt(Some(pinned), fx.key.clone()).unwrap();
    assert!(stats.verified);
    assert_eq!(stats.chunks_sent, 2);
    assert_eq!(
        std::fs::read(&fx.vol).unwrap(),
        std::fs::read(&fx.src).unwrap()
    );
    let sessions = server.join().unwrap();
    assert!(
        sessions[..3]
            .iter()
            .all(|(r, a)| r.is_err() && a.chunks == 0),
        "{sessions:?}"
    );
    assert!(sessions[3].0.is_ok(), "{sessions:?}");
}

#[test]
fn a_signature_from_another_session_does_not_verify() {
    let t = target::Trust {
        keys: vec![site_key(1).verifying_key().to_bytes()],
        allow_untrusted: false,
    };
    use ed25519_dalek::Signer;
    let k = site_key(1);
    let old = super::session::transcript(b"hello 1", b"welcome 1");
    let sig = k.sign(&super::session::signed_message(&old)).to_bytes();
    let pk = k.verifying_key().to_bytes();
    assert!(t.check_for_tests(Some((pk, sig)), &old).is_ok());
    let now = super::session::transcript(b"hello 2", b"welcome 2");
    let e = t.check_for_tests(Some((pk, sig)), &now).unwrap_err();
    assert!(e.contains("does not verify"), "{e}");
}

#[test]
fn a_key_cache_of_another_capture_id_is_refused() {
    let fx = fixture(&[2]);
    let before = std::fs::read(&fx.vol).unwrap();
    let (l, addr) = listen();
    let server = serve(l, fx.served("web01"), fx.volume(), 1);
    let mut plan = fx.plan(fx.key.clone());
    plan.capture_id = Some([0xee; 16]);
    plan.retries = 0;
    let e = source::run(&plan, &mut fx.disk(), &mut || source::tcp(&addr)).unwrap_err();
    assert!(
        format!("{e:#}").contains("refusing to sync this disk over a different capture"),
        "{e:#}"
    );
    assert_eq!(code_of(&e), FOUND);
    drop(server);
    assert_eq!(std::fs::read(&fx.vol).unwrap(), before);
    // The right id goes through.
    let (l, addr) = listen();
    let server = serve(l, fx.served("web01"), fx.volume(), 1);
    plan.capture_id = Some(fx.capture_id);
    assert!(
        source::run(&plan, &mut fx.disk(), &mut || source::tcp(&addr))
            .unwrap()
            .verified
    );
    server.join().unwrap();
}

#[test]
fn a_full_target_says_busy_and_the_source_retries() {
    let fx = fixture(&[4]);
    let (l, addr) = listen();
    let served = fx.served("web01");
    let vol = fx.volume();
    let limits = target::Limits {
        handshake: Duration::from_secs(2),
        idle: Duration::from_secs(30),
        max_peers: 1,
    };
    let server = std::thread::spawn(move || target::serve_loop(l, &served, vol, true, limits));
    // One silent peer takes the only slot until the handshake timeout drops it.
    let _idle = std::net::TcpStream::connect(&addr).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // Waiting for a busy target uses none of `--retries` (5 retries of 2 s gave up just as
    // the default 10 s handshake timeout freed the slots): none are allowed here.
    let mut plan = fx.plan(fx.key.clone());
    plan.retries = 0;
    plan.retry_wait = Duration::from_millis(250);
    let started = std::time::Instant::now();
    let stats = source::run(&plan, &mut fx.disk(), &mut || source::tcp(&addr)).unwrap();
    assert!(stats.verified);
    assert_eq!(stats.attempts, 1, "{stats:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "the first attempts met a busy target"
    );
    assert_eq!(
        std::fs::read(&fx.vol).unwrap(),
        std::fs::read(&fx.src).unwrap()
    );
    server.join().unwrap().unwrap();
}

/// Everything one side wrote to the socket.
struct Record {
    inner: Box<dyn Write + Send>,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl Write for Record {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.seen.lock().unwrap().extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Everything one side read from the socket.
struct RecordRead {
    inner: Box<dyn source::PeerRead>,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl source::PeerRead for RecordRead {}

impl io::Read for RecordRead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.seen.lock().unwrap().extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

#[test]
fn the_wire_carries_no_chunk_ids_indexes_or_data_in_clear() {
    // A compressible changed chunk, an all-zero one and an incompressible one.
    let fx = fixture(&[]);
    let mut disk = std::fs::read(&fx.src).unwrap();
    let cs = CS as usize;
    for (i, b) in disk[8 * cs..9 * cs].iter_mut().enumerate() {
        *b = b"motiongear sync "[i % 16];
    }
    disk[12 * cs..13 * cs].fill(0);
    disk[20 * cs..21 * cs].copy_from_slice(&noise(777, cs));
    std::fs::write(&fx.src, &disk).unwrap();
    let (l, addr) = listen();
    let server = serve(l, fx.served("web01"), fx.volume(), 1);
    let sent = Arc::new(Mutex::new(Vec::new()));
    let got = Arc::new(Mutex::new(Vec::new()));
    let mut connect = || -> io::Result<Conn> {
        let (r, w) = source::tcp(&addr)?;
        Ok((
            Box::new(RecordRead {
                inner: r,
                seen: got.clone(),
            }) as Box<dyn source::PeerRead>,
            Box::new(Record {
                inner: w,
                seen: sent.clone(),
            }) as Box<dyn Write + Send>,
        ))
    };
    let stats = source::run(&fx.plan(fx.key.clone()), &mut fx.disk(), &mut connect).unwrap();
    assert_eq!(stats.chunks_sent, 3);
    server.join().unwrap();
    let sent = sent.lock().unwrap().clone();
    let got = got.lock().unwrap().clone();
    let ids = IdKey::derive(&fx.key, &fx.capture_id);
    let has = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    for (i, c) in disk.chunks(cs).enumerate() {
        let id = ids.id(c);
        assert!(
            !has(&sent, &id),
            "chunk {i}'s keyed id travels in clear to the target"
        );
        assert!(
            !has(&got, &id),
            "chunk {i}'s keyed id travels in clear from the target"
        );
    }
    for index in [8u64, 12, 20] {
        let meta = [&index.to_le_bytes()[..], &CS.to_le_bytes()[..]].concat();
        assert!(
            !has(&sent, &meta),
            "chunk {index}'s index and length travel in clear"
        );
    }
    assert!(
        !has(&sent, b"motiongear sync "),
        "compressible data in clear"
    );
    assert!(
        !has(&sent, &disk[20 * cs..20 * cs + 64]),
        "raw data in clear"
    );
    // Only HELLO and WELCOME are clear frames; everything after is SEALED.
    let types = |mut b: &[u8]| {
        let mut out = Vec::new();
        while let Ok((t, _)) = super::wire::recv(&mut b, "rec") {
            out.push(t);
        }
        out
    };
    let (s, t) = (types(&sent), types(&got));
    use super::wire::ty;
    assert_eq!(s[0], ty::HELLO);
    assert!(s[1..].iter().all(|&x| x == ty::SEALED), "{s:?}");
    assert_eq!(
        s.len(),
        1 + 1 + 3 + 1,
        "HELLO, PROOF, 3 chunks, DONE: {s:?}"
    );
    assert_eq!(t[0], ty::WELCOME);
    assert!(t[1..].iter().all(|&x| x == ty::SEALED), "{t:?}");
}

/// What a session sends, read back with the target's keys: every changed
/// chunk is the format's own record (header, record number, zstd when
/// smaller), and image-format's record decoder gives the source's bytes back.
#[test]
fn chunks_travel_as_the_formats_own_records() {
    use super::session::{record_place, Role, Session};
    use super::wire::{ty, Chunk, ChunkBody, Hello, Message, Welcome};
    use image_format::layout::{RecordHeader, FLAG_ZSTD, REC_HEADER_LEN};
    let fx = fixture(&[]);
    let mut disk = std::fs::read(&fx.src).unwrap();
    let cs = CS as usize;
    for (i, b) in disk[8 * cs..9 * cs].iter_mut().enumerate() {
        *b = b"motiongear sync "[i % 16];
    }
    disk[12 * cs..13 * cs].fill(0);
    disk[20 * cs..21 * cs].copy_from_slice(&noise(777, cs));
    std::fs::write(&fx.src, &disk).unwrap();
    let (l, addr) = listen();
    let server = serve(l, fx.served("web01"), fx.volume(), 1);
    let sent = Arc::new(Mutex::new(Vec::new()));
    let got = Arc::new(Mutex::new(Vec::new()));
    let mut connect = || -> io::Result<Conn> {
        let (r, w) = source::tcp(&addr)?;
        Ok((
            Box::new(RecordRead {
                inner: r,
                seen: got.clone(),
            }) as Box<dyn source::PeerRead>,
            Box::new(Record {
                inner: w,
                seen: sent.clone(),
            }) as Box<dyn Write + Send>,
        ))
    };
    source::run(&fx.plan(fx.key.clone()), &mut fx.disk(), &mut connect).unwrap();
    server.join().unwrap();
    let sent = sent.lock().unwrap().clone();
    let got = got.lock().unwrap().clone();
    let (mut sent, mut got) = (&sent[..], &got[..]);
    let (t, hello) = super::wire::recv(&mut sent, "source").unwrap();
    assert_eq!(t, ty::HELLO);
    let (t, welcome) = super::wire::recv(&mut got, "target").unwrap();
    assert_eq!(t, ty::WELCOME);
    let (sn, tn) = (
        Hello::decode(&hello).unwrap().nonce,
        Welcome::decode(&welcome).unwrap().nonce,
    );
    let mut s = Session::new(&fx.key, &fx.capture_id, &sn, &tn, Role::Target);
    let mut records =
        image_format::RecordOpener::new(&fx.key, fx.capture_id, record_place(&sn, &tn), "web01");
    let (mut seen, mut next_record) = (Vec::new(), 0u32);
    while let Ok((t, p)) = super::wire::recv(&mut sent, "source") {
        assert_eq!(t, ty::SEALED);
        let (t, p) = s.open(&p).expect("opens as the next sealed frame");
        let Message::Chunk(Chunk {
            index,
            chunk_id,
            body,
        }) = Message::decode(t, &p).unwrap()
        else {
            continue;
        };
        let plain = &disk[index as usize * cs..(index as usize + 1) * cs];
        match body {
            ChunkBody::Zero => assert!(plain.iter().all(|&b| b == 0), "chunk {index}"),
            ChunkBody::Record(rec) => {
                let h = RecordHeader::decode(&rec).unwrap();
                // Numbered in the order sent; a zero chunk has no record.
                assert_eq!(h.record, next_record);
                next_record += 1;
                assert_eq!(rec.len(), REC_HEADER_LEN + h.stored_len as usize);
                assert_eq!(
                    h.flags == FLAG_ZSTD,
                    index == 8,
                    "only the text chunk compresses"
                );
                assert_eq!(records.open(&chunk_id, CS, &rec).unwrap(), plain);
            }
        }
        seen.push(index);
    }
    assert_eq!(seen, [8, 12, 20]);
}

/// A record altered inside a validly sealed frame (stored hash and header CRC
/// recomputed, so only the record's AEAD can tell) is refused as a bad record
/// and nothing is written.
#[test]
fn a_record_altered_inside_a_valid_seal_is_refused() {
    use super::session::{record_place, Role, Session};
    use super::wire::{err, ty, Chunk, ChunkBody, Hello, Proof, Refusal, Welcome};
    let fx = fixture(&[3]);
    let (l, addr) = listen();
    let server = serve(l, fx.served("web01"), fx.volume(), 1);
    let conn = std::net::TcpStream::connect(&addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let (mut r, mut w) = (&conn, &conn);
    let sn = [1u8; 32];
    let hello = Hello {
        name: "web01".into(),
        size: SIZE,
        nonce: sn,
    };
    super::wire::send(&mut w, ty::HELLO, &hello.encode()).unwrap();
    let (t, p) = super::wire::recv(&mut r, "target").unwrap();
    assert_eq!(t, ty::WELCOME);
    let tn = Welcome::decode(&p).unwrap().nonce;
    let mut s = Session::new(&fx.key, &fx.capture_id, &sn, &tn, Role::Source);
    let proof = Proof {
        proof: *s.proof("source", "web01").as_bytes(),
        signed: None,
    };
    let sealed = s.seal(ty::PROOF, &proof.encode()).unwrap();
    super::wire::send(&mut w, ty::SEALED, &sealed).unwrap();
    let (_, p) = super::wire::recv(&mut r, "target").unwrap();
    // No serve watched this volume before (and nothing watches it here): compare everything.
    assert_eq!(s.open(&p).unwrap(), (ty::VOLUME, vec![1]));
    let (_, p) = super::wire::recv(&mut r, "target").unwrap();
    assert_eq!(s.open(&p).unwrap().0, ty::IDS);

    let src = std::fs::read(&fx.src).unwrap();
    let data = &src[3 * CS as usize..4 * CS as usize];
    let mut sealer =
        image_format::RecordSealer::new(&fx.key, fx.capture_id, record_place(&sn, &tn), CS, SIZE)
            .unwrap();
    let encoded = sealer.encoder().encode(3, data).unwrap();
    let mut rec = sealer.seal(&encoded).unwrap();
    let n = rec.len();
    rec[n - 20] ^= 1;
    let hash = blake3::hash(&rec[64..]);
    rec[20..52].copy_from_slice(hash.as_bytes());
    let crc = crc32fast::hash(&rec[..60]);
    rec[60..64].copy_from_slice(&crc.to_le_bytes());
    let chunk = Chunk {
        index: 3,
        chunk_id: IdKey::derive(&fx.key, &fx.capture_id).id(data),
        body: ChunkBody::Record(rec),
    };
    let sealed = s.seal(ty::CHUNK, &chunk.encode()).unwrap();
    super::wire::send(&mut w, ty::SEALED, &sealed).unwrap();

    let (t, p) = super::wire::recv(&mut r, "target").unwrap();
    assert_eq!(t, ty::SEALED);
    let (t, p) = s.open(&p).unwrap();
    assert_eq!(t, ty::ERROR);
    let refusal = Refusal::decode(&p).unwrap();
    assert_eq!(refusal.code, err::BAD_RECORD);
    assert!(
        refusal.message.contains("chunk 3") && refusal.message.contains("authentication"),
        "{}",
        refusal.message
    );
    let results = server.join().unwrap();
    assert!(results[0].0.is_err());
    assert_eq!(results[0].1.chunks, 0);
    let vol = std::fs::read(&fx.vol).unwrap();
    assert_ne!(
        &vol[3 * CS as usize..4 * CS as usize],
        data,
        "nothing written"
    );
}

#[test]
fn an_idle_connection_neither_blocks_a_sync_nor_stays() {
    let fx = fixture(&[5, 9]);
    let (l, addr) = listen();
    let served = fx.served("web01");
    let vol = fx.volume();
    let limits = target::Limits {
        handshake: Duration::from_millis(1500),
        idle: Duration::from_secs(30),
        max_peers: 4,
    };
    let server = std::thread::spawn(move || target::serve_loop(l, &served, vol, true, limits));
    // Connected first, never says a word (a courier's laptop, a port scanner).
    let mut idle = std::net::TcpStream::connect(&addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    // Half a handshake: HELLO, then silence before PROOF.
    let mut half = std::net::TcpStream::connect(&addr).unwrap();
    half.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let hello = super::wire::Hello {
        name: "web01".into(),
        size: SIZE,
        nonce: [0; 32],
    }
    .encode();
    super::wire::send(&mut half, super::wire::ty::HELLO, &hello).unwrap();
    let stats = source::run(&fx.plan(fx.key.clone()), &mut fx.disk(), &mut || {
        source::tcp(&addr)
    })
    .unwrap();
    assert!(stats.verified);
    assert_eq!(stats.chunks_sent, 2);
    assert_eq!(
        std::fs::read(&fx.vol).unwrap(),
        std::fs::read(&fx.src).unwrap()
    );
    // Both unauthenticated peers are dropped by the handshake timeout (EOF),
    // well before their own 60 s read timeout.
    let mut buf = [0u8; 64];
    assert_eq!(
        io::Read::read(&mut idle, &mut buf).unwrap(),
        0,
        "idle peer dropped"
    );
    // Its HELLO answered before the one sync completed (WELCOME), or after it, when this
    // `--once` serve refuses every later session (DONE_ONCE): which, the scheduler decides.
    let (t, p) = super::wire::recv(&mut half, "target").unwrap();
    assert!(
        t == super::wire::ty::WELCOME
            || (t == super::wire::ty::ERROR
                && super::wire::Refusal::decode(&p)
                    .is_ok_and(|r| r.code == super::wire::err::DONE_ONCE)),
        "frame type {t}"
    );
    let mut rest = Vec::new();
    io::Read::read_to_end(&mut half, &mut rest).unwrap();
    assert!(rest.is_empty(), "half-open peer dropped without data");
    let total = server.join().unwrap().unwrap();
    assert_eq!(total.chunks, 2);
}

/// The pacing the sync applies to the frames it sends, on a simulated clock:
/// a 10 Mbit/s limit holds within 5% over a minute of mixed frame sizes
/// (compressed chunks, zero-chunk tags, full chunks).
#[test]
fn rate_limit_paces_sync_frames() {
    let rate = 10e6 / 8.0;
    let frame = 12 + 45 + 16 + 4;
    for chunk in [64 * 1024u64, 1 << 20, 4 << 20] {
        let mut b = Bucket::new(rate, rate.max(chunk as f64));
        let mut now = 0.0;
        let mut sent = 0u64;
        let mut i = 0u64;
        while now < 60.0 {
            let payload = match i % 3 {
                0 => chunk,
                1 => chunk / 3,
                _ => 0,
            };
            let bytes = payload + frame;
            now += b.take(bytes, now);
            // Encrypting and writing cost a little time too.
            now += 0.0005;
            sent += bytes;
            i += 1;
        }
        let achieved = sent as f64 / now;
        assert!(
            (achieved - rate).abs() / rate < 0.05,
            "chunk {chunk}: {achieved} B/s vs {rate}"
        );
    }
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(path: &Path) {
    for _ in 0..200 {
        if path.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("{} did not appear", path.display());
}

/// qemu persistent dirty bitmap -> only dirty chunks are read, and the target
/// ends equal to the changed source.
#[test]
fn dirty_bitmap_reads_only_dirty_ranges() {
    assert!(
        have("qemu-nbd") && have("qemu-img") && have("qemu-io"),
        "install qemu-utils"
    );
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("disk.qcow2");
    let size = 32u64 << 20;
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&q)
        .arg(size.to_string()));
    run(Command::new("qemu-io")
        .args(["-c", "write -P 0x11 0 24M"])
        .arg(&q));
    let vol = dir.path().join("vol.raw");
    run(Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(&q)
        .arg(&vol));
    run(Command::new("qemu-img")
        .args(["bitmap", "--add"])
        .arg(&q)
        .arg("b0"));
    // 3 changed areas: inside chunk 1, across chunks 7/8, and chunk 30 (past the old data).
    run(Command::new("qemu-io")
        .args([
            "-c",
            "write -P 0x22 1100k 8k",
            "-c",
            "write -P 0x33 8180k 64k",
            "-c",
            "write -P 0x44 30M 4k",
        ])
        .arg(&q));
    let changed = dir.path().join("changed.raw");
    run(Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(&q)
        .arg(&changed));
    let sock = dir.path().join("nbd.sock");
    let _nbd = Kill(
        Command::new("qemu-nbd")
            // Two clients and no exit after the first disconnect: the test connects again below.
            .args([
                "-r",
                "-f",
                "qcow2",
                "-B",
                "b0",
                "--shared=2",
                "--persistent",
                "--socket",
            ])
            .arg(&sock)
            .arg(&q)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(&sock);
    let url = format!("nbd+unix:///?socket={}", sock.display());
    let mut disk: Disk = crate::source::open(&url, Some("b0")).unwrap();
    let cs = 1u32 << 20;
    {
        assert_eq!(disk.dirty_chunks(cs).unwrap(), Some(vec![1, 7, 8, 30]));
        assert_eq!(
            disk.dirty_chunks(64 * 1024).unwrap().map(|d| d.len()),
            Some(1 + 2 + 1)
        );
    }

    let key = DataKey::from_bytes([3; 32]);
    let served = Served {
        name: "web01".into(),
        key: key.clone(),
        capture_id: [4; 16],
        chunk_size: cs,
        volume_size: size,
        trust: target::Trust {
            keys: Vec::new(),
            allow_untrusted: true,
        },
        fence: None,
    };
    let volume = Volume::open(
        in_place(&vol.clone()),
        size,
        cs,
        IdKey::derive(&key, &[4; 16]),
    )
    .unwrap();
    let (l, addr) = listen();
    let server = serve(l, served, volume, 2);
    let plan = Plan {
        name: "web01".into(),
        key,
        bitmap: Some("b0".into()),
        rate: None,
        retries: 0,
        retry_wait: Duration::ZERO,
        peer: addr.clone(),
        capture_id: None,
        signer: None,
        other_keys: Vec::new(),
        force: false,
    };
    // The first session to a serve that watched the volume from no earlier session: the
    // target cannot vouch that only syncs wrote it, so the bitmap is overruled and every
    // chunk is read (and the 4 changed ones sent).
    let stats = source::run(&plan, &mut disk, &mut || source::tcp(&addr)).unwrap();
    assert!(stats.bitmap_overruled, "{stats:?}");
    assert_eq!(stats.chunks_considered, size / cs as u64);
    assert_eq!(stats.bytes_read, size, "{stats:?}");
    assert_eq!(stats.chunks_sent, 4);
    assert!(stats.verified);
    // After that full compare the target vouches for its volume: only dirty chunks are read.
    let stats = source::run(&plan, &mut disk, &mut || source::tcp(&addr)).unwrap();
    assert!(!stats.bitmap_overruled, "{stats:?}");
    assert_eq!(stats.chunks_considered, 4);
    assert_eq!(
        stats.bytes_read,
        4 * cs as u64,
        "only dirty chunks are read: {stats:?}"
    );
    assert_eq!(stats.bytes_skipped, size - 4 * cs as u64);
    assert_eq!(stats.chunks_sent, 0);
    assert!(stats.verified);
    server.join().unwrap();
    assert_eq!(
        std::fs::read(&vol).unwrap(),
        std::fs::read(&changed).unwrap()
    );

    // A bitmap the export lacks is a clear usage error.
    drop(disk);
    let e = crate::source::open(&url, Some("nope")).err().unwrap();
    assert!(
        format!("{e:#}").contains("does not export dirty bitmap nope"),
        "{e:#}"
    );
    assert_eq!(code_of(&e), USAGE);
    // What to do is said once, not once by the NBD client and again by us.
    assert_eq!(format!("{e:#}").matches("-B nope").count(), 1, "{e:#}");
    assert!(crate::exit::hint(&e, "sync").starts_with("export it with `qemu-nbd -B nope`"));
    assert!(crate::source::open(vol.to_str().unwrap(), Some("b0")).is_err());
    // Opened without a bitmap, a source has no dirty chunks to offer: sync reads every chunk.
    let mut plain = crate::source::open(&url, None).unwrap();
    assert_eq!(plain.dirty_chunks(cs).unwrap(), None);
}

#[test]
fn retries_say_which_peer_was_lost_and_count_attempts_in_words() {
    let fx = fixture(&[1]);
    // A serve that died: nothing to read, and writes break.
    struct Dead;
    impl Write for Dead {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
    }
    let mut plan = fx.plan(fx.key.clone());
    plan.retries = 0;
    let mut connect = || -> io::Result<Conn> { Ok((Box::new(io::empty()), Box::new(Dead))) };
    let e = source::run(&plan, &mut fx.disk(), &mut connect).unwrap_err();
    let m = format!("{e:#}");
    assert!(
        m.contains("lost the connection to test target while sending"),
        "{m}"
    );
    assert!(m.contains("(gave up after 1 attempt; re-run"), "{m}");
    assert_eq!(code_of(&e), crate::exit::IO);
    // The next step names the serve to check (the generic hint said to reconnect a path).
    let h = crate::exit::hint(&e, "sync");
    assert!(h.contains("`mgear serve` of web01 still runs"), "{h}");
    // One that closed the connection after the handshake began: "closed", not "failed to fill whole buffer".
    let mut connect = || -> io::Result<Conn> { Ok((Box::new(io::empty()), Box::new(io::sink()))) };
    plan.retries = 1;
    let e = source::run(&plan, &mut fx.disk(), &mut connect).unwrap_err();
    let m = format!("{e:#}");
    assert!(m.contains("test target closed the connection"), "{m}");
    assert!(m.contains("(gave up after 2 attempts;"), "{m}");
}

#[test]
fn another_disk_is_refused_naming_source_and_serve_and_the_serve_says_why() {
    // Every chunk differs: the source is not the disk the target holds.
    let all: Vec<u64> = (0..=CHUNKS).collect();
    let fx = fixture(&all);
    let before = std::fs::read(&fx.vol).unwrap();
    let (l, addr) = listen();
    let server = serve(l, fx.served("web01"), fx.volume(), 1);
    let mut plan = fx.plan(fx.key.clone());
    plan.retries = 0;
    let e = source::run(&plan, &mut fx.disk(), &mut || source::tcp(&addr)).unwrap_err();
    let m = format!("{e:#}");
    assert_eq!(code_of(&e), FOUND, "{m}");
    assert!(
        m.contains("does not look like the disk captured as web01"),
        "{m}"
    );
    // The served volume may be the wrong one just as well as the source.
    assert!(
        m.contains("the volume the target test target serves")
            && m.contains("serve's --target is not the volume ingested from web01"),
        "{m}"
    );
    let sessions = server.join().unwrap();
    let logged = sessions[0].0.as_ref().unwrap_err();
    assert!(
        logged.contains("ended the session") && logged.contains("does not look like the disk"),
        "{logged}"
    );
    assert!(!logged.contains("fill whole buffer"), "{logged}");
    assert_eq!(std::fs::read(&fx.vol).unwrap(), before);
}

#[test]
fn serve_refuses_a_volume_that_cannot_be_the_ingested_disk() {
    use crate::spec::Target;
    let file = Target::File("vol.raw".into());
    let dev = Target::Dev("/dev/vdb".into());
    let mib = 1u64 << 20;
    assert_eq!(
        super::served_size(&file, 64 * mib, 64 * mib, "bt01").unwrap(),
        None
    );
    // Smaller than the disk, or a file of another size: not what ingest wrote.
    for (t, vol) in [(&file, 32 * mib), (&file, 65 * mib), (&dev, 32 * mib)] {
        let e = super::served_size(t, vol, 64 * mib, "bt01").unwrap_err();
        assert_eq!(code_of(&e), USAGE, "{e}");
        assert!(
            format!("{e}").contains(&format!("is {vol} bytes"))
                && format!("{e}").contains("not the volume ingested from bt01"),
            "{e}"
        );
        assert!(crate::exit::hint(&e, "serve").contains("mgear ingest --name bt01"));
    }
    // A device rounded up past the disk: served, its tail left alone.
    let note = super::served_size(&dev, 65 * mib, 64 * mib, "bt01")
        .unwrap()
        .unwrap();
    assert!(
        note.contains("first 67108864 bytes are kept in sync"),
        "{note}"
    );

    // The served volume is the disk's size: ids and sizes stop at its end.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("big.raw");
    std::fs::write(&p, vec![3u8; 3 * CS as usize]).unwrap();
    let key = IdKey::derive(&DataKey::from_bytes([1; 32]), &[2; 16]);
    let v = Volume::open(in_place(&p), 2 * CS as u64, CS, key.clone()).unwrap();
    assert_eq!(v.size(), 2 * CS as u64);
    assert!(Volume::open(in_place(&p), 4 * CS as u64, CS, key).is_err());
}

#[test]
fn serve_says_a_missing_volume_must_be_ingested_first() {
    let t = crate::spec::Target::File("/proc/mgear-none/nope.raw".into());
    let e = super::check_volume_exists(&t, "web01").unwrap_err();
    assert!(
        format!("{e}").contains("the volume /proc/mgear-none/nope.raw does not exist"),
        "{e}"
    );
    let hint = crate::exit::hint(&e, "serve");
    assert!(hint.contains("ingest web01 into it first"), "{hint}");
}

#[test]
fn a_busy_listening_port_says_what_to_do() {
    let (taken, addr) = listen();
    let e = super::bind(&addr).unwrap_err();
    assert_eq!(code_of(&e), crate::exit::IO);
    assert!(
        format!("{e}").starts_with(&format!("cannot listen on {addr}: ")),
        "{e}"
    );
    let hint = crate::exit::hint(&e, "serve");
    assert!(
        hint.contains("another `mgear serve`") && hint.contains("another --listen"),
        "{hint}"
    );
    drop(taken);
}

/// The typed `mgear sync` command line of the tests below: nothing that
/// exists, so only the checks that come first can pass.
fn cli_plan(to: &str) -> crate::sync::Plan {
    crate::sync::Plan {
        source: "/proc/mgear-none/disk.raw".into(),
        to: to.into(),
        name: "web01".into(),
        key_cache: Some("/proc/mgear-none/keys".into()),
        dirty_bitmap: None,
        rate_limit: None,
        retries: 5,
        retry_wait: 2.0,
        json: false,
        sign: None,
        force: false,
    }
}

#[test]
fn a_malformed_to_is_a_usage_error_at_once() {
    for bad in [
        "notaport",
        "127.0.0.1:99999",
        "localhost",
        ":7410",
        "127.0.0.1:0",
        "127.0.0.1:",
    ] {
        let started = std::time::Instant::now();
        let e = super::run_sync(&cli_plan(bad)).err().unwrap();
        assert_eq!(code_of(&e), USAGE, "{bad}: {e:#}");
        let m = format!("{e:#}");
        assert!(
            m.starts_with(&format!("--to {bad}: give HOST:PORT")) && m.contains("1 to 65535"),
            "{m}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{bad} was retried"
        );
    }
    // A listening address may ask for any free port; a bad one names --listen.
    assert!(super::check_address("--listen", "127.0.0.1:0", true).is_ok());
    assert!(super::check_address("--to", "[::1]:7410", false).is_ok());
    let e = super::check_address("--listen", "localhost", true).unwrap_err();
    assert!(format!("{e}").starts_with("--listen localhost: "), "{e}");
}

#[test]
fn a_host_that_does_not_resolve_ends_the_sync_without_retries() {
    let started = std::time::Instant::now();
    let e = super::resolve("nosuchhost.invalid:7410").unwrap_err();
    // The environment (3), not the arguments; said once, not after 6 attempts.
    assert_eq!(code_of(&e), crate::exit::IO, "{e:#}");
    assert!(
        format!("{e:#}").contains("--to nosuchhost.invalid:7410: cannot resolve the host name"),
        "{e:#}"
    );
    assert!(crate::exit::hint(&e, "sync").contains("host name in --to"));
    assert!(started.elapsed() < Duration::from_secs(30));
    super::resolve("127.0.0.1:7410").unwrap();
}

/// A target that closed nothing and reads nothing (a proxy that stopped forwarding): a write
/// blocked in the kernel with no limit (the socket's timeout restarts with every byte taken,
/// and none was). It ends after the wait's limit, as the wait for an answer does.
#[test]
fn a_target_that_stops_reading_ends_the_wait() {
    let (l, addr) = listen();
    let held = std::thread::spawn(move || l.accept().map(|(s, _)| s));
    let (mut r, mut w) = source::tcp_waiting(&addr, Duration::from_secs(3)).unwrap();
    let _peer = held.join().unwrap().unwrap();
    let started = std::time::Instant::now();
    let chunk = vec![7u8; 1 << 20];
    let e = (0..1024)
        .try_for_each(|_| w.write_all(&chunk))
        .expect_err("the peer reads nothing: a write must give up");
    assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    // Reading: nothing comes, and the wait ends too.
    let mut b = [0u8; 1];
    let e = std::io::Read::read(&mut r, &mut b).expect_err("nothing to read");
    assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
}
