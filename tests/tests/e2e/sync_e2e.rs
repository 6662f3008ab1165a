//! `mgear serve` / `mgear sync` / `mgear cutover` end to end through the real
//! binary: capture → ingest → the source changes → sync makes the ingested
//! volume equal the changed source, a killed sync resumes, and cutover boots
//! the synced volume and prints its downtime. The origin rule: `serve --trust
//! site.pub` applies only sessions signed with `sync --sign site.key`; the
//! attacker's data key, unsigned or unpinned sessions are refused, and idle
//! connections neither block a sync nor stay.

use mgear_tests::{output_text as text, same_file, Background, Env, Line};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use rand::{RngCore, SeedableRng};

const MIB: usize = 1 << 20;

/// What the sync scenarios do again and again, on the shared scratch [`Env`].
trait SyncEnv {
    fn capture_and_ingest(&self, medium_size: &str);
    fn listen(&self, extra: &[&str]) -> (Background, String);
}

impl SyncEnv for Env {
    /// keygen (target and capture site), FAT medium, capture `disk.raw` as
    /// web01, ingest into `vol.raw`.
    fn capture_and_ingest(&self, medium_size: &str) {
        self.ok(&["keygen", "--out", "target.key"]);
        self.ok(&["keygen", "--signing", "--out", "site.key"]);
        self.ok(&["medium", "format", "fat:medium.img", "--size", medium_size]);
        self.capture("fat:medium.img", "web01")
            .source("disk.raw")
            .ok();
        self.ingest("fat:medium.img", "web01")
            .untrusted()
            .target("file:vol.raw")
            .unsealed()
            .ok();
        assert_eq!(
            std::fs::read(self.p("vol.raw")).unwrap(),
            std::fs::read(self.p("disk.raw")).unwrap()
        );
    }

    /// Start `mgear serve` of web01 into `vol.raw`, pinning `site.pub`;
    /// returns it and its address.
    fn listen(&self, extra: &[&str]) -> (Background, String) {
        self.serve("fat:medium.img", "web01")
            .trust("site.pub")
            .args(extra)
            .listen()
    }
}

/// The key cache file of the one capture of `name` in `dir` (`NAME-<capture id>.key`).
fn key_file(dir: &Path, name: &str) -> PathBuf {
    let found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|f| f.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&format!("{name}-"))
                && p.extension().is_some_and(|x| x == "key")
        })
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    found.into_iter().next().unwrap()
}

/// `mgear sync` of `disk.raw` as web01 to `addr`, signed, held to `rate`: started by the
/// caller, in the background.
fn slow_sync(e: &Env, addr: &str, rate: &str) -> std::process::Command {
    e.cmd(&[
        "sync",
        "--source",
        "disk.raw",
        "--to",
        addr,
        "--name",
        "web01",
        "--rate-limit",
        rate,
        "--sign",
        "site.key",
    ])
}

/// Wait until the first 1 MiB chunk of `vol.raw` is the first of `src`: a sync's first
/// changed chunk landed.
fn first_chunk_landed(e: &Env, src: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::read(e.p("vol.raw")).unwrap()[..MIB] != src[..MIB] {
        assert!(Instant::now() < deadline, "the first chunk never arrived");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn write_disk(path: &Path, mib: usize, seed: u64) {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let mut d = vec![0u8; mib * MIB];
    for (i, c) in d.chunks_mut(MIB).enumerate() {
        if i % 5 != 4 {
            rng.fill_bytes(c);
        }
    }
    std::fs::write(path, d).unwrap();
}

/// Overwrite 1 MiB chunks `which` of `path` with fresh random data.
fn change_chunks(path: &Path, which: &[usize], seed: u64) {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let mut d = std::fs::read(path).unwrap();
    for &c in which {
        rng.fill_bytes(&mut d[c * MIB..(c + 1) * MIB]);
    }
    std::fs::write(path, d).unwrap();
}

/// `serve --once` is one sync: a second one that connected while the first ran waited at the
/// volume and was applied after it, exit 0 for both, before the serve ended. It is refused
/// now (exit 3, nothing applied), and the serve ends after the first.
#[test]
fn sync_a_serve_once_applies_one_sync_and_refuses_the_one_that_waited() {
    let e = Env::new();
    write_disk(&e.p("disk.raw"), 16, 31);
    e.capture_and_ingest("64MiB");
    change_chunks(&e.p("disk.raw"), &[0, 5, 9, 14], 32);
    let src = std::fs::read(e.p("disk.raw")).unwrap();
    let (mut serve, addr) = e.listen(&["--once"]);
    let first = slow_sync(&e, &addr, "4MiB/s")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    first_chunk_landed(&e, &src);
    let second = e.run(&[
        "sync", "--source", "disk.raw", "--to", &addr, "--name", "web01", "--sign", "site.key",
    ]);
    let first = first.wait_with_output().unwrap();
    assert!(first.status.success(), "{}", text(&first));
    assert_eq!(second.status.code(), Some(3), "{}", text(&second));
    assert!(
        text(&second).contains("--once") && text(&second).contains("nothing was applied"),
        "{}",
        text(&second)
    );
    assert!(serve.0.wait().unwrap().success());
    assert_eq!(std::fs::read(e.p("vol.raw")).unwrap(), src);
}

#[test]
fn sync_after_ingest_makes_the_volume_equal_the_changed_source() {
    let e = Env::new();
    write_disk(&e.p("disk.raw"), 16, 1);
    e.capture_and_ingest("64MiB");
    change_chunks(&e.p("disk.raw"), &[3, 9, 15], 2);
    let (mut serve, addr) = e.listen(&["--once"]);
    let r = e.json(&[
        "sync", "--source", "disk.raw", "--to", &addr, "--name", "web01", "--sign", "site.key",
    ]);
    assert_eq!(r["chunks_sent"], 3, "{r}");
    assert_eq!(r["verified"], true, "{r}");
    assert_eq!(r["bytes_read"], 16 * MIB as u64, "{r}");
    // Little more than the changed chunks crosses the wire.
    let wire = r["wire_bytes"].as_u64().unwrap();
    assert!(
        wire > 3 * MIB as u64 && wire < 3 * MIB as u64 + 16 * 1024,
        "{r}"
    );
    assert!(r["cpu_share"].as_f64().unwrap() >= 0.0, "{r}");
    assert!(
        serve.0.wait().unwrap().success(),
        "serve --once exits 0 after the sync"
    );
    assert_eq!(
        std::fs::read(e.p("vol.raw")).unwrap(),
        std::fs::read(e.p("disk.raw")).unwrap()
    );

    // The human summary names read, skipped, sent and CPU share.
    let (mut serve, addr) = e.listen(&["--once"]);
    let o = e.ok(&[
        "sync", "--source", "disk.raw", "--to", &addr, "--name", "web01", "--sign", "site.key",
    ]);
    let s = String::from_utf8_lossy(&o.stdout);
    for want in [
        "read:",
        "skipped",
        "sent:       0 chunks",
        "source cpu:",
        "full read of this disk takes",
    ] {
        assert!(s.contains(want), "missing {want:?} in\n{s}");
    }

    assert!(serve.0.wait().unwrap().success());

    // The first trip's ingest run again over the synced volume: refused, not "pass --force to
    // write it again" (which put generation 1 back and lost the syncs without a word).
    let again = || {
        e.ingest("fat:medium.img", "web01")
            .untrusted()
            .target("file:vol.raw")
            .unsealed()
    };
    let o = again().run();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("`mgear serve` kept it up to date since")
            && text(&o).contains("lose what the syncs brought"),
        "{}",
        text(&o)
    );
    assert_eq!(
        std::fs::read(e.p("vol.raw")).unwrap(),
        std::fs::read(e.p("disk.raw")).unwrap()
    );
    // Meant: --force writes it, and says what is lost.
    let o = again().arg("--force").run();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("what the syncs brought is lost"),
        "{}",
        text(&o)
    );
    assert_ne!(
        std::fs::read(e.p("vol.raw")).unwrap(),
        std::fs::read(e.p("disk.raw")).unwrap()
    );
}

#[test]
fn a_killed_sync_resumes_and_refusals_are_clear() {
    let e = Env::new();
    write_disk(&e.p("disk.raw"), 12, 3);
    e.capture_and_ingest("64MiB");
    let changed = [0, 1, 2, 5, 6, 7, 8, 10];
    change_chunks(&e.p("disk.raw"), &changed, 4);
    let log_path = e.p("serve.log");
    let (serve, addr) = e
        .serve("fat:medium.img", "web01")
        .trust("site.pub")
        .listen_logging(std::fs::File::create(&log_path).unwrap());

    // A slow sync, killed once the first changed chunk reached the volume.
    let mut first = slow_sync(&e, &addr, "1MiB/s")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let src = std::fs::read(e.p("disk.raw")).unwrap();
    first_chunk_landed(&e, &src);
    first.kill().unwrap();
    first.wait().unwrap();

    let r = e.json(&[
        "sync", "--source", "disk.raw", "--to", &addr, "--name", "web01", "--sign", "site.key",
    ]);
    let sent = r["chunks_sent"].as_u64().unwrap();
    assert!(
        sent < changed.len() as u64,
        "the rerun must not resend what landed: {r}"
    );
    assert_eq!(r["verified"], true);
    assert_eq!(std::fs::read(e.p("vol.raw")).unwrap(), src);

    // A qcow2 file as the source: refused by its magic, with the export to use (it was
    // refused for its size alone, "or that disk shrank since").
    let st = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(e.p("q.qcow2"))
        .arg("12M")
        .status()
        .unwrap();
    assert!(st.success());
    let o = e
        .cmd(&[
            "sync", "--source", "q.qcow2", "--to", &addr, "--name", "web01", "--sign", "site.key",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("is a qcow2 disk image") && text(&o).contains("qemu-nbd -r -t -f qcow2"),
        "{}",
        text(&o)
    );
    assert_eq!(std::fs::read(e.p("vol.raw")).unwrap(), src);

    // A capture this host never captured: no key cache for it.
    let o = e
        .cmd(&[
            "sync", "--source", "disk.raw", "--to", &addr, "--name", "db02",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("key cache"),
        "{}",
        text(&o)
    );

    // A wrong key in the cache is refused before any data moves.
    let cache = key_file(&e.p("state/mgear/keys"), "web01");
    let good = std::fs::read_to_string(&cache).unwrap();
    let bad: String = good
        .lines()
        .map(|l| {
            if l.starts_with("key ") {
                format!("key {}", "ab".repeat(32))
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&cache, bad).unwrap();
    let o = e
        .cmd(&[
            "sync", "--source", "disk.raw", "--to", &addr, "--name", "web01", "--sign", "site.key",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("does not open the target's capture web01"),
        "{}",
        text(&o)
    );
    std::fs::write(&cache, good).unwrap();
    // The serve's log once it says `what` (or after 20 s).
    let log_saying = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let log = std::fs::read_to_string(&log_path).unwrap();
            if log.contains(what) || Instant::now() > deadline {
                break log;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // The serve's log tells the killed session (work kept) from the refused
    // one (nothing applied, nothing to continue).
    let log = log_saying("ended with nothing applied");
    assert!(log.contains("ended early after"), "{log}");
    assert!(log.contains("ended with nothing applied"), "{log}");
    assert!(!log.contains("ended early after 0 chunks"), "{log}");
    // Stopped, serve sums every chunk it applied: the killed session's (kept) too.
    let pid = serve.0.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let log = log_saying("mgear serve: applied");
    let number_after = |line: &str, key: &str| -> u64 {
        let rest = &line[line.find(key).unwrap_or_else(|| panic!("{key}: {line}")) + key.len()..];
        rest.split_whitespace().next().unwrap().parse().unwrap()
    };
    let mut applied = 0;
    for l in log.lines() {
        if l.contains("ended early after") {
            applied += number_after(l, "ended early after ");
        } else if l.contains(" complete: ") {
            applied += number_after(l, " complete: ");
        }
    }
    let total = log
        .lines()
        .find(|l| l.contains("mgear serve: applied"))
        .map(|l| number_after(l, "applied "))
        .unwrap_or_else(|| panic!("no stop summary: {log}"));
    assert_eq!(total, applied, "{log}");

    // A port where something else listens.
    let stranger = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let saddr = stranger.local_addr().unwrap().to_string();
    let t = std::thread::spawn(move || {
        use std::io::Write;
        if let Ok((mut c, _)) = stranger.accept() {
            let _ = c.write_all(b"SSH-2.0-OpenSSH_9.2\r\n");
        }
    });
    let o = e
        .cmd(&[
            "sync", "--source", "disk.raw", "--to", &saddr, "--name", "web01",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("does not speak the MotionGear sync protocol"),
        "{}",
        text(&o)
    );
    t.join().unwrap();
}

#[test]
fn cutover_boots_the_synced_volume_and_reports_downtime() {
    let e = Env::new();
    let disk = e.p("disk.raw");
    let o = e.ok(&[
        "boot",
        "--build-sample",
        disk.to_str().unwrap(),
        "--marker",
        "before",
    ]);
    drop(o);
    e.capture_and_ingest("256MiB");
    // The source changes after the capture: the same disk with another marker.
    e.ok(&[
        "boot",
        "--build-sample",
        disk.to_str().unwrap(),
        "--marker",
        "after",
    ]);
    assert_ne!(
        std::fs::read(e.p("vol.raw")).unwrap(),
        std::fs::read(&disk).unwrap()
    );
    let log_path = e.p("serve.log");
    let (_serve, addr) = e
        .serve("fat:medium.img", "web01")
        .trust("site.pub")
        .listen_logging(std::fs::File::create(&log_path).unwrap());
    // A copy of the volume as ingested, before the sync: booting it would "prove" a
    // machine that never got the last changes. Refused after the warm sync (the serve on
    // this host names its volume), before the quiesce: nothing booted, nothing stopped.
    std::fs::copy(e.p("vol.raw"), e.p("stale.raw")).unwrap();
    let cutover = |boot_target: &str| {
        e.line(&[
            "cutover",
            "--source",
            "disk.raw",
            "--to",
            &addr,
            "--name",
            "web01",
            "--quiesce",
            "touch quiesced",
            "--resume",
            "touch resumed",
            "--boot-target",
            boot_target,
            "--wait-for",
            "MGEAR-BOOT-OK after",
            "--boot-timeout",
            "300",
            "--sign",
            "site.key",
        ])
        .run()
    };
    let o = cutover("file:stale.raw");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("is not the volume the syncs write")
            && !e.p("quiesced").exists()
            && !e.p("resumed").exists(),
        "{}",
        text(&o)
    );
    let o = cutover("file:vol.raw");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(s.contains("downtime: "), "{}", text(&o));
    assert!(e.p("quiesced").exists());
    assert!(
        !e.p("resumed").exists(),
        "resume runs only when the cutover fails"
    );
    // Its probe before the quiesce is logged as what it is ("refused the source: this
    // target does not know capture (a cutover asking ...)" read as an error).
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains("asked whether this is a mgear serve (a cutover")
            && !log.contains("refused the source"),
        "{log}"
    );
}

fn read_volume(e: &Env) -> Vec<u8> {
    std::fs::read(e.p("vol.raw")).unwrap()
}

#[test]
fn serve_applies_only_pinned_signed_syncs_and_drops_idle_peers() {
    let e = Env::new();
    write_disk(&e.p("disk.raw"), 8, 5);
    e.capture_and_ingest("64MiB");
    change_chunks(&e.p("disk.raw"), &[1, 6], 6);
    let before = read_volume(&e);

    // serve must be told whose syncs to accept.
    let o = e.serve("fat:medium.img", "web01").run();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--trust"),
        "{}",
        text(&o)
    );

    let (_serve, addr) = e.listen(&["--handshake-timeout", "2"]);
    // A connection that never says anything is open the whole time.
    let mut idle = std::net::TcpStream::connect(&addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let sync_from = |source: &str, extra: &[&str]| {
        let mut a = vec![
            "sync",
            "--source",
            source,
            "--to",
            &addr,
            "--name",
            "web01",
            "--retries",
            "0",
        ];
        a.extend_from_slice(extra);
        e.cmd(&a).output().unwrap()
    };
    let sync = |extra: &[&str]| sync_from("disk.raw", extra);

    // Unsigned: refused, exit 1, with the way on (not "the data did not check out").
    let o = sync(&[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("did not sign the session")
            && String::from_utf8_lossy(&o.stderr).contains("serve --trust SITE.pub")
            && !String::from_utf8_lossy(&o.stderr).contains("did not check out"),
        "{}",
        text(&o)
    );
    // Signed by a site key the target does not pin.
    e.ok(&["keygen", "--signing", "--out", "other.key"]);
    let o = sync(&["--sign", "other.key"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("does not pin"),
        "{}",
        text(&o)
    );
    // The attacker's own capture of another disk, made with target.pub only:
    // its data key does not open the served capture, even under the pinned signature.
    write_disk(&e.p("evil.raw"), 8, 66);
    std::fs::create_dir(e.p("evil")).unwrap();
    e.capture("dir:evil", "web01")
        .source("evil.raw")
        .args(&["--key-cache", "evil-keys"])
        .ok();
    let evil = |o: &Output| String::from_utf8_lossy(&o.stderr).to_string();
    let o = sync_from(
        "evil.raw",
        &["--key-cache", "evil-keys", "--sign", "site.key"],
    );
    // Its key cache names another capture id than the one served: exit 1.
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        evil(&o).contains("refusing to sync this disk over a different capture"),
        "{}",
        text(&o)
    );
    // Without the id line (an edited or older cache) the key proof refuses it.
    let cache = key_file(&e.p("evil-keys"), "web01");
    let stripped: String = std::fs::read_to_string(&cache)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("id "))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::remove_file(&cache).unwrap();
    std::fs::write(&cache, stripped).unwrap();
    let o = sync_from(
        "evil.raw",
        &["--key-cache", "evil-keys", "--sign", "site.key"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        evil(&o).contains("does not open the target's capture web01"),
        "{}",
        text(&o)
    );
    assert_eq!(
        read_volume(&e),
        before,
        "no refused peer changed the volume"
    );

    // The pinned site's signed sync completes while the idle connection is still open.
    let o = sync(&["--sign", "site.key", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["verified"], true, "{r}");
    assert_eq!(r["chunks_sent"], 2, "{r}");
    assert_eq!(read_volume(&e), std::fs::read(e.p("disk.raw")).unwrap());
    // ...and the idle peer was dropped by the handshake timeout (EOF, not our 120 s timeout).
    let mut buf = [0u8; 16];
    let n = std::io::Read::read(&mut idle, &mut buf).expect("dropped, not timed out");
    assert_eq!(n, 0, "the idle peer is disconnected");
}

#[test]
fn allow_untrusted_is_an_explicit_loud_override() {
    let e = Env::new();
    write_disk(&e.p("disk.raw"), 4, 7);
    e.capture_and_ingest("64MiB");
    change_chunks(&e.p("disk.raw"), &[2], 8);
    let mut child = e
        .serve("fat:medium.img", "web01")
        .args(&["--allow-untrusted", "--once"])
        .command()
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_string();
    e.ok(&[
        "sync", "--source", "disk.raw", "--to", &addr, "--name", "web01",
    ]);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("WARNING: --allow-untrusted"), "{log}");
    assert!(log.contains("UNSIGNED session accepted"), "{log}");
    assert_eq!(read_volume(&e), std::fs::read(e.p("disk.raw")).unwrap());
}

/// `mgear serve --target VOL --listen ADDR` with the usual medium, key and
/// pin, run to its end (for the refusals, which come before it listens).
fn serve_run(e: &Env, target: &str, listen: &str) -> Output {
    serve_run_of(e, "web01", target, listen)
}

/// `mgear serve` of capture `name` to the end, as [`serve_run`].
fn serve_run_of(e: &Env, name: &str, target: &str, listen: &str) -> Output {
    e.run(&[
        "serve",
        "--target",
        target,
        "--medium",
        "fat:medium.img",
        "--name",
        name,
        "--identity",
        "target.key",
        "--trust",
        "site.pub",
        "--listen",
        listen,
    ])
}

/// Ctrl-C to `child` (SIGINT).
fn interrupt(child: &std::process::Child) {
    let st = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// Everything cutover can find wrong with its arguments is found before it
/// syncs or quiesces anything; a quiesce command that fails is exit 3 naming
/// it, and with `--json` stdout is exactly one JSON object (what the hooks
/// print goes to stderr); a malformed `--to` is exit 2 at once, for sync too.
#[test]
fn cutover_checks_its_arguments_first_and_a_failing_quiesce_is_one_json_error() {
    let e = Env::new();
    write_disk(&e.p("disk.raw"), 4, 9);
    e.capture_and_ingest("64MiB");
    let log_path = e.p("serve.log");
    let (_serve, addr) = e
        .serve("fat:medium.img", "web01")
        .trust("site.pub")
        .listen_logging(std::fs::File::create(&log_path).unwrap());
    let cutover = |to: &str, quiesce: &str, boot_target: &str, extra: &[&str]| {
        let mut a = vec![
            "cutover",
            "--source",
            "disk.raw",
            "--to",
            to,
            "--name",
            "web01",
            "--sign",
            "site.key",
            "--quiesce",
            quiesce,
            "--boot-target",
            boot_target,
        ];
        a.extend_from_slice(extra);
        let started = Instant::now();
        let o = e.run(&a);
        (o, started.elapsed())
    };
    let refused = |o: &Output, code: i32, says: &str| {
        assert_eq!(o.status.code(), Some(code), "{}", text(o));
        assert!(stderr(o).contains(says), "{says:?} in {}", text(o));
        assert!(!e.p("quiesced").exists(), "quiesced: {}", text(o));
    };

    // A regex that does not compile: before the warm sync, not after the final one.
    let (o, _) = cutover(
        &addr,
        "touch quiesced",
        "file:vol.raw",
        &["--wait-for", "("],
    );
    refused(&o, 2, "--wait-for is not a valid regex");
    // A boot target of no known kind names --boot-target.
    let (o, _) = cutover(&addr, "touch quiesced", "bogus:xyz", &[]);
    refused(&o, 2, "--boot-target bogus:xyz: say which kind");
    // The source itself, by its name and through a symlink.
    std::os::unix::fs::symlink(e.p("disk.raw"), e.p("link.raw")).unwrap();
    for bt in ["file:disk.raw", "link.raw"] {
        let (o, _) = cutover(&addr, "touch quiesced", bt, &[]);
        refused(
            &o,
            2,
            &format!("--boot-target {bt} is the --source disk.raw"),
        );
    }
    // The boot target's own file served as the source (`qemu-nbd vol.raw`): it synced
    // nothing and booted the source's disk, exit 0.
    {
        let sock = e.p("vol.sock");
        let _server = mgear_tests::qemu_nbd(&["-t", "-r", "-f", "raw"], &sock, &e.p("vol.raw"));
        let url = format!("nbd+unix:///?socket={}", sock.display());
        let o = e.run(&[
            "cutover",
            "--source",
            &url,
            "--to",
            &addr,
            "--name",
            "web01",
            "--sign",
            "site.key",
            "--quiesce",
            "touch quiesced",
            "--boot-target",
            "file:vol.raw",
        ]);
        refused(&o, 2, "--boot-target file:vol.raw is the --source nbd+unix");
    }
    // A --to that is no HOST:PORT: exit 2 at once, not ten seconds of retries.
    for bad in ["notaport", "127.0.0.1:99999", "localhost"] {
        let (o, took) = cutover(bad, "touch quiesced", "file:vol.raw", &[]);
        refused(&o, 2, &format!("--to {bad}: give HOST:PORT"));
        assert!(took < Duration::from_secs(5), "{bad}: {took:?}");
        let started = Instant::now();
        let o = e.run(&[
            "sync", "--source", "disk.raw", "--to", bad, "--name", "web01",
        ]);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(stderr(&o).contains("give HOST:PORT"), "{}", text(&o));
        assert!(started.elapsed() < Duration::from_secs(5), "{bad}");
    }
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(!log.contains("session with"), "nothing was synced: {log}");

    // The quiesce command fails: exit 3 naming it, the source resumed, and
    // stdout is the one JSON object (the hooks' own output went to stderr).
    let (o, _) = cutover(
        &addr,
        "echo QFAIL; exit 7",
        "file:vol.raw",
        &[
            "--resume",
            "echo RESUMED; touch resumed",
            "--no-presync",
            "--json",
        ],
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|err| panic!("not one JSON object ({err}): {}", text(&o)));
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["error"]["kind"], "io", "{v}");
    let m = v["error"]["message"].as_str().unwrap();
    for want in [
        "the --quiesce command `echo QFAIL; exit 7` failed (exit status: 7)",
        "the target was not booted",
        "the source was resumed with `echo RESUMED; touch resumed`",
    ] {
        assert!(m.contains(want), "{want:?} in {v}");
    }
    assert!(
        v["error"]["hint"]
            .as_str()
            .unwrap()
            .starts_with("fix the --quiesce command"),
        "{v}"
    );
    assert!(stderr(&o).contains("QFAIL") && stderr(&o).contains("RESUMED"));
    assert!(e.p("resumed").exists());

    // The synced volume holds no system (the disk is random data): the boot fails, and the
    // advice is about booting it, not "the data did not check out" (it was verified).
    let (o, _) = cutover(
        &addr,
        "touch quiesced-now",
        "file:vol.raw",
        &["--no-presync", "--json"],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let (m, hint) = (
        v["error"]["message"].as_str().unwrap(),
        v["error"]["hint"].as_str().unwrap(),
    );
    assert!(m.contains("the target did not prove it booted"), "{v}");
    assert!(!m.contains("see --firmware"), "{v}");
    // What it cost: the final sync that ran, and how long the source was down.
    assert!(
        m.contains("the final sync had sent ") && m.contains("and the source had been quiesced "),
        "{v}"
    );
    assert!(
        hint.starts_with(
            "the final sync verified the serve's volume, and file:vol.raw was checked"
        ) && !hint.contains("did not check out"),
        "{v}"
    );
}

/// The volume of an ingest that has not finished (`X.partial`) is not served: a sync into
/// it was undone when that ingest was run again to finish it, both having said "verified".
#[test]
fn serve_refuses_the_volume_of_an_unfinished_ingest() {
    let e = Env::new();
    write_disk(&e.p("disk.raw"), 4, 71);
    e.capture_and_ingest("64MiB");
    std::fs::copy(e.p("vol.raw"), e.p("vol.raw.partial")).unwrap();
    let o = e.run(&[
        "serve",
        "--target",
        "file:vol.raw.partial",
        "--medium",
        "fat:medium.img",
        "--name",
        "web01",
        "--identity",
        "target.key",
        "--trust",
        "site.pub",
        "--listen",
        "127.0.0.1:0",
        "--once",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        stderr(&o).contains("is the volume of an ingest that has not finished")
            && stderr(&o).contains("then serve vol.raw"),
        "{}",
        text(&o)
    );
}

/// Ctrl-C or SIGTERM while the quiesced source is synced: SIGTERM ended cutover at once (exit
/// 143) with the source left down and `--resume` never run, and Ctrl-C was not heard at all
/// (the sync ran on and the target was booted). Both stop the sync between chunks, run
/// `--resume`, boot nothing, exit 3; a Ctrl-C that reaches the hooks' terminal group does not
/// kill the `--resume` that brings the source back.
#[test]
fn a_stopped_cutover_resumes_the_source_and_boots_nothing() {
    let e = Env::new();
    write_disk(&e.p("disk.raw"), 6, 61);
    e.capture_and_ingest("64MiB");
    let (_serve, addr) = e
        .serve("fat:medium.img", "web01")
        .trust("site.pub")
        .listen();
    for (n, signal) in ["-TERM", "-INT"].into_iter().enumerate() {
        change_chunks(&e.p("disk.raw"), &[0, 1, 2, 3], 62 + n as u64);
        let _ = std::fs::remove_file(e.p("quiesced"));
        let child = e
            .line(&[
                "cutover",
                "--source",
                "disk.raw",
                "--to",
                &addr,
                "--name",
                "web01",
                "--sign",
                "site.key",
                "--quiesce",
                "touch quiesced",
                "--resume",
                "rm quiesced",
                "--boot-target",
                "file:vol.raw",
                "--no-presync",
                "--rate-limit",
                "512KiB/s",
            ])
            .command()
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let started = Instant::now();
        let mut child = child;
        while !e.p("quiesced").exists() {
            if started.elapsed() > Duration::from_secs(60) || child.try_wait().unwrap().is_some() {
                let _ = child.kill();
                panic!(
                    "never quiesced: {}",
                    text(&child.wait_with_output().unwrap())
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(1500));
        let asked = Instant::now();
        let st = std::process::Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        let o = child.wait_with_output().unwrap();
        assert!(
            asked.elapsed() < Duration::from_secs(30),
            "{signal}: {:?}",
            asked.elapsed()
        );
        assert_eq!(o.status.code(), Some(3), "{signal}: {}", text(&o));
        let err = stderr(&o);
        assert!(
            err.contains("stopped (Ctrl-C or SIGTERM) after quiescing; the source was resumed"),
            "{signal}: {err}"
        );
        assert!(!err.contains("booting"), "{signal}: {err}");
        assert!(!e.p("quiesced").exists(), "{signal}: not resumed: {err}");
    }
}

/// A copy of the synced volume made before the source last changed is not the volume the
/// syncs wrote: cutover compares every chunk its syncs sent (not only spread samples, which
/// miss a change in the last MiB of a 40 MiB disk) and refuses it before anything boots.
#[test]
fn cutover_refuses_a_stale_copy_of_the_volume_as_its_boot_target() {
    let e = Env::new();
    write_disk(&e.p("disk.raw"), 40, 21);
    e.capture_and_ingest("64MiB");
    let log_path = e.p("serve.log");
    let (mut serve, addr) = e
        .serve("fat:medium.img", "web01")
        .trust("site.pub")
        .listen_logging(std::fs::File::create(&log_path).unwrap());
    std::fs::copy(e.p("vol.raw"), e.p("stale.raw")).unwrap();
    {
        use std::os::unix::fs::FileExt as _;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(e.p("disk.raw"))
            .unwrap();
        f.write_all_at(&[0x5a; 4096], 40 * MIB as u64 - 4096)
            .unwrap();
    }
    let o = e.run(&[
        "cutover",
        "--source",
        "disk.raw",
        "--to",
        &addr,
        "--name",
        "web01",
        "--sign",
        "site.key",
        "--quiesce",
        "true",
        "--resume",
        "touch resumed",
        "--boot-target",
        "file:stale.raw",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    // The serve's record on this host names its volume: refused after the warm sync, before
    // the quiesce (it was found after it, a downtime for nothing).
    assert!(
        stderr(&o).contains("--boot-target file:stale.raw is not the volume the syncs write"),
        "{}",
        text(&o)
    );
    assert!(!e.p("resumed").exists(), "{}", text(&o));
    same_file(&e.p("vol.raw"), &e.p("disk.raw"));
    // A copy made before a plain sync, and a cutover that then sends nothing: the copy lacks
    // only what that sync wrote (chunk 4, which no spread sample reads), and it was booted
    // and the cutover called complete. The serve's record on this host names its volume.
    std::fs::copy(e.p("vol.raw"), e.p("stale2.raw")).unwrap();
    {
        use std::os::unix::fs::FileExt as _;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(e.p("disk.raw"))
            .unwrap();
        f.write_all_at(&[0xa5; 4096], 4 * MIB as u64 + 8192)
            .unwrap();
    }
    #[rustfmt::skip]
    let o = e.run(&["sync", "--source", "disk.raw", "--to", &addr, "--name", "web01", "--sign", "site.key"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    #[rustfmt::skip]
    let o = e.run(&["cutover", "--source", "disk.raw", "--to", &addr, "--name", "web01", "--sign", "site.key", "--quiesce", "touch quiesced", "--resume", "touch resumed", "--boot-target", "file:stale2.raw"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        stderr(&o).contains("a serve on this host keeps another volume in sync"),
        "{}",
        text(&o)
    );
    // Found after the warm sync, before the quiesce (it cost a downtime for nothing).
    assert!(stderr(&o).contains("nothing was quiesced"), "{}", text(&o));
    assert!(!e.p("quiesced").exists(), "{}", text(&o));
    assert!(!e.p("resumed").exists(), "{}", text(&o));
    // The serve's own volume, but the source written on after the quiesce (a quiesce that
    // does not stop writes): it was "not the volume the final sync wrote; boot the volume
    // `mgear serve` keeps in sync", the very volume refused.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, path) = (stop.clone(), e.p("disk.raw"));
        std::thread::spawn(move || {
            use std::os::unix::fs::FileExt as _;
            let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
            let mut n = 0u8;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n = n.wrapping_add(1);
                f.write_all_at(&[n; 4096], 0).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        })
    };
    #[rustfmt::skip]
    let o = e.run(&["cutover", "--source", "disk.raw", "--to", &addr, "--name", "web01", "--sign", "site.key", "--quiesce", "true", "--resume", "touch resumed", "--boot-target", "file:vol.raw"]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        stderr(&o).contains("the source changed after --quiesce")
            && !stderr(&o).contains("is not the volume the final sync wrote"),
        "{}",
        text(&o)
    );
    assert!(e.p("resumed").exists(), "{}", text(&o));
    // Stopping serve says what that means for a serve (no checkpoint of a capture's).
    let st = std::process::Command::new("kill")
        .args(["-TERM", &serve.0.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let _ = serve.0.wait();
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains(
            "mgear serve: stopping: no new sync is accepted, a sync under way is finished first"
        ),
        "{log}"
    );
    assert!(!log.contains("keeping its checkpoint"), "{log}");
}

/// serve checks its volume and port before it reads the volume: another
/// disk's volume (another size) or a missing one is refused, a busy port ends
/// it at once; and a sync that finds its source is not the disk the serve
/// holds tells the serve why it stops.
#[test]
fn serve_refuses_a_volume_that_is_not_the_ingested_disk_and_a_busy_port_at_once() {
    let e = Env::new();
    write_disk(&e.p("disk.raw"), 8, 11);
    e.capture_and_ingest("64MiB");

    // Half the size: not the volume ingested from web01.
    let vol = std::fs::read(e.p("vol.raw")).unwrap();
    std::fs::write(e.p("half.raw"), &vol[..vol.len() / 2]).unwrap();
    let o = serve_run(&e, "file:half.raw", "127.0.0.1:0");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        stderr(&o).contains("it is not the volume ingested from web01")
            && stderr(&o).contains("mgear ingest --name web01"),
        "{}",
        text(&o)
    );
    assert!(o.stdout.is_empty(), "{}", text(&o));

    // A file of the right size that no ingest or serve of web01 recorded: a copy (another
    // machine's volume cloned from the same image shares most chunks: the sync's sample
    // matched, it overwrote that volume and said "verified"), or a file moved in over the
    // ingested one's name.
    std::fs::copy(e.p("vol.raw"), e.p("copy.raw")).unwrap();
    let o = serve_run(&e, "file:copy.raw", "127.0.0.1:0");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        stderr(&o).contains("holds no ingest of web01 recorded on this host")
            && stderr(&o).contains("--force"),
        "{}",
        text(&o)
    );
    assert!(o.stdout.is_empty(), "{}", text(&o));
    std::fs::rename(e.p("vol.raw"), e.p("vol.keep")).unwrap();
    std::fs::rename(e.p("copy.raw"), e.p("vol.raw")).unwrap();
    let o = serve_run(&e, "file:vol.raw", "127.0.0.1:0");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    std::fs::rename(e.p("vol.raw"), e.p("copy.raw")).unwrap();
    std::fs::rename(e.p("vol.keep"), e.p("vol.raw")).unwrap();
    // The ingested volume by another name (a hard link, a path through `..`) is served: the
    // record names it by device and inode.
    std::fs::hard_link(e.p("vol.raw"), e.p("hard.raw")).unwrap();
    std::fs::create_dir(e.p("sub")).unwrap();
    for target in ["file:hard.raw", "file:sub/../vol.raw"] {
        let (mut s, _addr) = mgear_tests::Line::new(&e, &["serve", "--target", target])
            .medium("fat:medium.img")
            .args(&["--name", "web01", "--identity", "target.key"])
            .args(&["--listen", "127.0.0.1:0"])
            .trust("site.pub")
            .listen();
        let _ = s.0.kill();
        let _ = s.0.wait();
    }
    std::fs::remove_file(e.p("hard.raw")).unwrap();

    // A volume that is not there: ingest it first.
    let o = serve_run(&e, "file:nope.raw", "127.0.0.1:0");
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        stderr(&o).contains("the volume nope.raw does not exist")
            && stderr(&o).contains("ingest web01 into it first"),
        "{}",
        text(&o)
    );

    // A capture that is not on the medium: said so (it was "no key slot left: they were
    // erased", a crypto-erase that never happened).
    let o = serve_run_of(&e, "web09", "file:vol.raw", "127.0.0.1:0");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        stderr(&o).contains("there is no capture \"web09\" on fat:medium.img (captures: web01)")
            && !stderr(&o).contains("erased"),
        "{}",
        text(&o)
    );

    // A port another program holds: said before the volume is hashed.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = busy.local_addr().unwrap().to_string();
    let o = serve_run(&e, "file:vol.raw", &taken);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        stderr(&o).contains(&format!("cannot listen on {taken}"))
            && stderr(&o).contains("another `mgear serve`")
            && stderr(&o).contains("another --listen"),
        "{}",
        text(&o)
    );
    assert!(!stderr(&o).contains("hashed"), "{}", text(&o));
    drop(busy);

    // Another disk as --source: the sync names the serve's volume as a
    // possible cause, and the serve's log says the source ended the session.
    let log_path = e.p("serve.log");
    let (_serve, addr) = e
        .serve("fat:medium.img", "web01")
        .trust("site.pub")
        .listen_logging(std::fs::File::create(&log_path).unwrap());
    write_disk(&e.p("other.raw"), 8, 12);
    let o = e.run(&[
        "sync",
        "--source",
        "other.raw",
        "--to",
        &addr,
        "--name",
        "web01",
        "--sign",
        "site.key",
        "--retries",
        "0",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        stderr(&o).contains("does not look like the disk captured as web01")
            && stderr(&o).contains("serve's --target is not the volume ingested from web01")
            // A disk of a few chunks: said, as a changed one reads the same.
            && stderr(&o).contains("the volume holds data in only"),
        "{}",
        text(&o)
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let log = loop {
        let log = std::fs::read_to_string(&log_path).unwrap();
        if log.contains("ended with nothing applied") || Instant::now() > deadline {
            break log;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        log.contains("ended the session: other.raw does not look like the disk"),
        "{log}"
    );
    assert!(!log.contains("fill whole buffer"), "{log}");
    assert_eq!(std::fs::read(e.p("vol.raw")).unwrap(), vol);
}

/// The wrong-disk check reads every non-zero chunk of a small volume: a 3-chunk disk (a set's
/// small data disk) synced from another disk was overwritten and called verified, because the
/// check wanted at least four chunks to sample. Refused (exit 1), the volume unchanged.
#[test]
fn a_small_disk_synced_from_another_disk_is_refused() {
    let e = Env::new();
    write_disk(&e.p("disk.raw"), 3, 21);
    e.capture_and_ingest("64MiB");
    let vol = std::fs::read(e.p("vol.raw")).unwrap();
    write_disk(&e.p("other.raw"), 3, 22);
    let (_serve, addr) = e.listen(&["--once"]);
    let o = e.run(&[
        "sync",
        "--source",
        "other.raw",
        "--to",
        &addr,
        "--name",
        "web01",
        "--sign",
        "site.key",
        "--retries",
        "0",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        stderr(&o).contains("none of 3 sampled chunks matches"),
        "{}",
        text(&o)
    );
    assert_eq!(std::fs::read(e.p("vol.raw")).unwrap(), vol);
}

/// Something other than serve wrote the volume while serve ran (a mount, fsck, `dd`): serve
/// answered from the chunk ids it hashed at start, the sync sent nothing for the chunk that
/// changed and said verified. Serve now hashes the volume again when its file changed since
/// serve's own last write, and the sync makes it equal to the source.
#[test]
fn a_volume_written_behind_serves_back_is_hashed_again() {
    use std::os::unix::fs::FileExt;
    let e = Env::new();
    write_disk(&e.p("disk.raw"), 8, 31);
    e.capture_and_ingest("64MiB");
    let log_path = e.p("serve.log");
    let (_serve, addr) = e
        .serve("fat:medium.img", "web01")
        .trust("site.pub")
        .listen_logging(std::fs::File::create(&log_path).unwrap());
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(e.p("vol.raw"))
        .unwrap();
    f.write_all_at(&[0x5a; 4096], 3 * MIB as u64 + 4096)
        .unwrap();
    drop(f);
    let r = e.json(&[
        "sync", "--source", "disk.raw", "--to", &addr, "--name", "web01", "--sign", "site.key",
    ]);
    assert_eq!(r["chunks_sent"], 1, "{r}");
    assert_eq!(
        std::fs::read(e.p("vol.raw")).unwrap(),
        std::fs::read(e.p("disk.raw")).unwrap()
    );
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("was written by something else"), "{log}");

    // Resized under serve: grown, it was synced and called verified with a tail no sync keeps;
    // truncated, the sync retried a reset connection five times (exit 3) with no reason.
    // Refused at once, saying what happened (exit 2), and served again once it is put back.
    for len in [9 * MIB as u64, 6 * MIB as u64] {
        std::fs::OpenOptions::new()
            .write(true)
            .open(e.p("vol.raw"))
            .unwrap()
            .set_len(len)
            .unwrap();
        let o = e.run(&[
            "sync", "--source", "disk.raw", "--to", &addr, "--name", "web01", "--sign", "site.key",
        ]);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(&format!(
                "vol.raw is now {len} bytes, but the disk it holds is"
            )) && err.contains("something resized it")
                && !err.contains("reconnecting"),
            "{err}"
        );
    }
    std::fs::write(e.p("vol.raw"), std::fs::read(e.p("disk.raw")).unwrap()).unwrap();
    let r = e.json(&[
        "sync", "--source", "disk.raw", "--to", &addr, "--name", "web01", "--sign", "site.key",
    ]);
    assert_eq!(r["verified"], true, "{r}");
}

/// Something wrote the volume while a session applied chunks: serve's own next write moved
/// the file's change times again, so the write went unseen, the session and every later one
/// said "verified", and the volume kept it. Serve now checks the times before each write of
/// its own and at the end: it hashes the volume again and ends the session, the sync starts a
/// new one, and the volume ends equal to the source.
#[test]
fn a_volume_written_during_a_session_is_hashed_again_and_the_sync_starts_over() {
    use std::os::unix::fs::FileExt;
    let e = Env::new();
    write_disk(&e.p("disk.raw"), 16, 41);
    e.capture_and_ingest("64MiB");
    change_chunks(&e.p("disk.raw"), &(0..12).collect::<Vec<_>>(), 42);
    let log_path = e.p("serve.log");
    let (_serve, addr) = e
        .serve("fat:medium.img", "web01")
        .trust("site.pub")
        .listen_logging(std::fs::File::create(&log_path).unwrap());
    let sync = slow_sync(&e, &addr, "3MiB/s")
        .arg("--json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Once the first changed chunk landed, another program writes a chunk the sync does not
    // send (twice, 50 ms apart: the kernel keeps change times to its clock tick, and one of
    // the two lands in another tick than serve's own writes).
    let src = std::fs::read(e.p("disk.raw")).unwrap();
    first_chunk_landed(&e, &src);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(e.p("vol.raw"))
        .unwrap();
    for _ in 0..2 {
        f.write_all_at(&[0x5a; 4096], 14 * MIB as u64).unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(f);
    let o = sync.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    // The target's reason reaches the sync (it met the closed connection while sending, and
    // said "Broken pipe; reconnecting in 2 s"), and the new session is no retry.
    assert!(
        err.contains("was written by another program during this session")
            && err.contains("starting a new session")
            && !err.contains("Broken pipe")
            && !err.contains("reconnecting"),
        "{err}"
    );
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["verified"], true, "{r}");
    assert_eq!(r["attempts"], 1, "{r}");
    assert!(r["restarts"].as_u64().unwrap() >= 1, "{r}");
    assert_eq!(std::fs::read(e.p("vol.raw")).unwrap(), src);
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains("was written by something else during this session"),
        "{log}"
    );
}

/// Ctrl-C of a sync ended it with exit 130 and nothing said: it stops between chunks, says
/// the target keeps what it applied, exits 3, and the same command then finishes the job.
#[test]
fn a_sync_stopped_with_ctrl_c_says_so_and_continues() {
    let e = Env::new();
    write_disk(&e.p("disk.raw"), 16, 41);
    e.capture_and_ingest("64MiB");
    change_chunks(
        &e.p("disk.raw"),
        &(0..16).step_by(2).collect::<Vec<_>>(),
        42,
    );
    let (_serve, addr) = e.listen(&[]);
    let sync = [
        "sync", "--source", "disk.raw", "--to", &addr, "--name", "web01", "--sign", "site.key",
    ];
    let child = e
        .line(&sync)
        .args(&["--rate-limit", "4MiB/s"])
        .command()
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    interrupt(&child);
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        stderr(&o).contains("stopped; whatever the target applied before the stop stays applied"),
        "{}",
        text(&o)
    );
    e.ok(&sync);
    assert_eq!(
        std::fs::read(e.p("vol.raw")).unwrap(),
        std::fs::read(e.p("disk.raw")).unwrap()
    );
}

/// A peer that takes the connection and then neither answers nor reads (a proxy that stopped
/// forwarding): Ctrl-C only printed "stopping after the work at hand" while the sync waited in
/// the kernel, up to the peer timeout of each attempt (a second Ctrl-C killed it, exit 130). It
/// stops within a few seconds, exit 3, saying so.
#[test]
fn ctrl_c_ends_a_wait_on_a_silent_target() {
    let e = Env::new();
    write_disk(&e.p("disk.raw"), 4, 43);
    e.capture_and_ingest("64MiB");
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let held = std::thread::spawn(move || l.accept().map(|(s, _)| s));
    let child = e
        .line(&[
            "sync", "--source", "disk.raw", "--to", &addr, "--name", "web01", "--sign", "site.key",
        ])
        .command()
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _peer = held.join().unwrap().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let asked = Instant::now();
    interrupt(&child);
    let o = child.wait_with_output().unwrap();
    assert!(
        asked.elapsed() < Duration::from_secs(60),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(stderr(&o).contains("stopped;"), "{}", text(&o));
}

/// The serve on this host keeps an NBD export in sync, and an earlier serve kept `vol.raw`:
/// a cutover booting `vol.raw` (which the last sync never wrote, and which differs only
/// where no sample reads) is refused, exit 2, nothing booted. It went by the file's old
/// record, booted the stale file and reported the cutover complete.
#[test]
fn cutover_refuses_a_file_when_the_serve_keeps_an_nbd_export() {
    use std::os::unix::fs::FileExt as _;
    let e = Env::new();
    write_disk(&e.p("disk.raw"), 40, 22);
    e.capture_and_ingest("64MiB");
    // A serve of the file, one session: its record names vol.raw.
    {
        let (mut serve, addr) = e.listen(&[]);
        #[rustfmt::skip]
        let o = e.run(&["sync", "--source", "disk.raw", "--to", &addr, "--name", "web01", "--sign", "site.key"]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let _ = serve.0.kill();
        let _ = serve.0.wait();
    }
    std::fs::copy(e.p("vol.raw"), e.p("export.raw")).unwrap();
    let sock = e.p("export.sock");
    let _export = mgear_tests::qemu_nbd(&["-t", "-f", "raw"], &sock, &e.p("export.raw"));
    let export = format!("nbd+unix:///?socket={}", sock.display());
    #[rustfmt::skip]
    let (_serve, addr) = Line::new(&e, &["serve", "--target", &export])
        .medium("fat:medium.img")
        .args(&["--name", "web01", "--identity", "target.key", "--listen", "127.0.0.1:0"])
        .trust("site.pub")
        .listen();
    // A change in chunk 4, which none of the cutover's spread samples reads.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(e.p("disk.raw"))
        .unwrap();
    f.write_all_at(&[0xa5; 4096], 4 * MIB as u64 + 8192)
        .unwrap();
    drop(f);
    #[rustfmt::skip]
    let o = e.run(&["sync", "--source", "disk.raw", "--to", &addr, "--name", "web01", "--sign", "site.key"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    #[rustfmt::skip]
    let o = e.run(&["cutover", "--source", "disk.raw", "--to", &addr, "--name", "web01", "--sign", "site.key", "--quiesce", "touch quiesced", "--resume", "touch resumed", "--boot-target", "file:vol.raw"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        stderr(&o).contains("a serve on this host keeps another volume in sync"),
        "{}",
        text(&o)
    );
    assert!(!e.p("quiesced").exists(), "{}", text(&o));
    assert!(!e.p("resumed").exists(), "{}", text(&o));
    same_file(&e.p("export.raw"), &e.p("disk.raw"));
}

/// Ctrl-C while a sync waits to reconnect (nothing listens at `--to`) ends it within a
/// second or two, said as a stop: it slept out the whole `--retry-wait` (27 s of a 30 s
/// wait, with a cutover's source quiesced meanwhile). And a `--no-presync` cutover finds a
/// target that takes no connection before the quiesce (it quiesced the source, then found it).
#[test]
fn a_reconnect_wait_ends_at_ctrl_c_and_a_dead_target_is_found_before_the_quiesce() {
    let e = Env::new();
    write_disk(&e.p("disk.raw"), 4, 44);
    e.capture_and_ingest("64MiB");
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let child = e
        .line(&[
            "sync",
            "--source",
            "disk.raw",
            "--to",
            &dead,
            "--name",
            "web01",
            "--sign",
            "site.key",
            "--retry-wait",
            "30",
        ])
        .command()
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let asked = Instant::now();
    interrupt(&child);
    let o = child.wait_with_output().unwrap();
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(stderr(&o).contains("reconnecting in 30 s"), "{}", text(&o));
    assert!(stderr(&o).contains("stopped;"), "{}", text(&o));

    // With the warm sync too (it was retried for 10 s, then "re-run to continue", with
    // neither the quiesce nor --to named).
    for presync in [false, true] {
        let mut args = vec![
            "cutover",
            "--source",
            "disk.raw",
            "--to",
            &dead,
            "--name",
            "web01",
            "--sign",
            "site.key",
            "--quiesce",
            "touch quiesced",
            "--resume",
            "touch resumed",
            "--boot-target",
            "file:vol.raw",
        ];
        if !presync {
            args.push("--no-presync");
        }
        let asked = Instant::now();
        let o = e.run(&args);
        assert_eq!(o.status.code(), Some(3), "{}", text(&o));
        assert!(
            stderr(&o).contains(&format!("cannot connect to the target at --to {dead}"))
                && stderr(&o).contains("nothing was quiesced")
                && stderr(&o).contains("start `mgear serve`")
                && !stderr(&o).contains("reconnecting"),
            "{}",
            text(&o)
        );
        assert!(
            asked.elapsed() < Duration::from_secs(8),
            "{:?}",
            asked.elapsed()
        );
        assert!(!e.p("quiesced").exists() && !e.p("resumed").exists());
    }
    // Something else listens at --to (an SSH server's banner, a listener that says nothing):
    // it was taken for a serve, the source quiesced, and the final sync failed or hung.
    for banner in [&b"SSH-2.0-OpenSSH_9.2\r\n"[..], &b""[..]] {
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let at = other.local_addr().unwrap().to_string();
        let talker = std::thread::spawn(move || {
            if let Ok((mut c, _)) = other.accept() {
                use std::io::Write;
                let _ = c.write_all(banner);
                std::thread::sleep(Duration::from_secs(12));
            }
        });
        let o = e.run(&[
            "cutover",
            "--source",
            "disk.raw",
            "--to",
            &at,
            "--name",
            "web01",
            "--sign",
            "site.key",
            "--quiesce",
            "touch quiesced",
            "--resume",
            "touch resumed",
            "--boot-target",
            "file:vol.raw",
            "--no-presync",
        ]);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(
            stderr(&o).contains("it is not a `mgear serve`; nothing was quiesced"),
            "{}",
            text(&o)
        );
        assert!(!e.p("quiesced").exists() && !e.p("resumed").exists());
        let _ = talker.join();
    }
    // A target that listens: the probe is no session, and a --once serve still takes the
    // cutover's sync after it.
    let (mut server, addr) = e.listen(&["--once"]);
    let o = e.run(&[
        "cutover",
        "--source",
        "disk.raw",
        "--to",
        &addr,
        "--name",
        "web01",
        "--sign",
        "site.key",
        "--quiesce",
        "touch quiesced",
        "--resume",
        "touch resumed",
        "--boot-target",
        "file:vol.raw",
        "--no-presync",
        "--wait-for",
        "never-printed",
        "--boot-timeout",
        "1",
    ]);
    assert!(e.p("quiesced").exists(), "{}", text(&o));
    assert!(
        server.0.wait().unwrap().success(),
        "the --once serve did not complete the cutover's sync: {}",
        text(&o)
    );
    // With the warm sync, a --once serve takes that one as its only sync: the source was
    // quiesced for a final sync that could not connect (10 s of downtime, exit 3). Found
    // before the quiesce now.
    std::fs::remove_file(e.p("quiesced")).unwrap();
    let _ = std::fs::remove_file(e.p("resumed"));
    let (mut server, addr) = e.listen(&["--once"]);
    let o = e.run(&[
        "cutover",
        "--source",
        "disk.raw",
        "--to",
        &addr,
        "--name",
        "web01",
        "--sign",
        "site.key",
        "--quiesce",
        "touch quiesced",
        "--resume",
        "touch resumed",
        "--boot-target",
        "file:vol.raw",
        "--wait-for",
        "never-printed",
        "--boot-timeout",
        "1",
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        text(&o).contains("--once") && text(&o).contains("nothing was quiesced"),
        "{}",
        text(&o)
    );
    assert!(!e.p("quiesced").exists(), "{}", text(&o));
    let _ = server.0.kill();
    let _ = server.0.wait();
}

/// The NBD server of the export a serve keeps restarts under it: the serve connects again
/// (and hashes the export again) at the next session. Every later sync failed with "the NBD
/// connection is unusable after an earlier error; reconnect", and the serve ran on.
#[test]
fn a_serve_of_an_nbd_export_connects_again_after_its_server_restarts() {
    use std::os::unix::fs::FileExt as _;
    let e = Env::new();
    write_disk(&e.p("disk.raw"), 8, 23);
    e.capture_and_ingest("64MiB");
    std::fs::copy(e.p("vol.raw"), e.p("export.raw")).unwrap();
    let sock = e.p("export.sock");
    let export = format!("nbd+unix:///?socket={}", sock.display());
    let server = mgear_tests::qemu_nbd(&["-t", "-f", "raw"], &sock, &e.p("export.raw"));
    #[rustfmt::skip]
    let (_serve, addr) = Line::new(&e, &["serve", "--target", &export])
        .medium("fat:medium.img")
        .args(&["--name", "web01", "--identity", "target.key", "--listen", "127.0.0.1:0"])
        .trust("site.pub")
        .listen();
    drop(server);
    let _ = std::fs::remove_file(&sock);
    let _server = mgear_tests::qemu_nbd(&["-t", "-f", "raw"], &sock, &e.p("export.raw"));
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(e.p("disk.raw"))
        .unwrap();
    f.write_all_at(&[0x5a; 4096], 3 * MIB as u64).unwrap();
    drop(f);
    #[rustfmt::skip]
    let o = e.run(&["sync", "--source", "disk.raw", "--to", &addr, "--name", "web01", "--sign", "site.key"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(
        std::fs::read(e.p("export.raw")).unwrap(),
        std::fs::read(e.p("disk.raw")).unwrap()
    );
    // Its server killed in the middle of a sync and back a second later: the sync waits for
    // it (the serve answers BUSY) and goes on (it ended, exit 3, at the first broken write).
    change_chunks(&e.p("disk.raw"), &[0, 1, 2, 5, 6, 7], 24);
    let sync = slow_sync(&e, &addr, "2MiB/s")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    drop(_server);
    let _ = std::fs::remove_file(&sock);
    std::thread::sleep(Duration::from_millis(1000));
    let _server = mgear_tests::qemu_nbd(&["-t", "-f", "raw"], &sock, &e.p("export.raw"));
    let o = sync.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(
        std::fs::read(e.p("export.raw")).unwrap(),
        std::fs::read(e.p("disk.raw")).unwrap()
    );
}

/// A serve that keeps a device (`dev:`, here a loop device larger than the disk) in sync: a
/// cutover booting that device was refused after the quiesce ("a serve on this host keeps
/// another volume in sync"), the serve's record naming the device by its spec and the
/// cutover's by the node's inode; a device larger than the disk was refused by its size.
/// It is the volume the final sync wrote: booted (here it finds nothing bootable: the disk
/// is random), not refused.
#[test]
fn cutover_boots_the_device_the_serve_keeps_in_sync() {
    let e = Env::new();
    write_disk(&e.p("disk.raw"), 8, 45);
    e.capture_and_ingest("64MiB");
    std::fs::File::create(e.p("dev.img"))
        .unwrap()
        .set_len(10 * MIB as u64)
        .unwrap();
    let dev = mgear_tests::Loop::attach(&e.p("dev.img"));
    e.ingest("fat:medium.img", "web01")
        .untrusted()
        .target(&format!("dev:{}", dev.0))
        .unsealed()
        .arg("--force")
        .ok();
    let (_serve, addr) = Line::new(&e, &["serve", "--target", &format!("dev:{}", dev.0)])
        .medium("fat:medium.img")
        .args(&["--name", "web01", "--identity", "target.key"])
        .args(&["--listen", "127.0.0.1:0"])
        .trust("site.pub")
        .listen();
    #[rustfmt::skip]
    let o = e.run(&["cutover", "--source", "disk.raw", "--to", &addr, "--name", "web01", "--sign", "site.key", "--quiesce", "true", "--resume", "true", "--boot-target", &format!("dev:{}", dev.0), "--boot-timeout", "30"]);
    assert!(
        !stderr(&o).contains("is not the volume the final sync wrote"),
        "{}",
        text(&o)
    );
    assert!(stderr(&o).contains("booting dev:"), "{}", text(&o));
}

/// A sync stopped by Ctrl-C after chunks went: the serve's log says the source ended the
/// session and why (it said only that the connection closed), and keeps what it applied.
#[test]
fn a_stopped_sync_tells_the_serve_why() {
    let e = Env::new();
    write_disk(&e.p("disk.raw"), 12, 31);
    e.capture_and_ingest("64MiB");
    change_chunks(&e.p("disk.raw"), &[1, 2, 3, 5, 6, 7, 8, 10, 11], 32);
    let log_path = e.p("serve.log");
    let (_serve, addr) = e
        .serve("fat:medium.img", "web01")
        .trust("site.pub")
        .listen_logging(std::fs::File::create(&log_path).unwrap());
    let child = e
        .cmd(&[
            "sync",
            "--source",
            "disk.raw",
            "--to",
            &addr,
            "--name",
            "web01",
            "--sign",
            "site.key",
            "--rate-limit",
            "1MiB/s",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    interrupt(&child);
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let deadline = Instant::now() + Duration::from_secs(20);
    let log = loop {
        let log = std::fs::read_to_string(&log_path).unwrap();
        if log.contains("ended the session") || Instant::now() > deadline {
            break log;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        log.contains("ended the session: stopped"),
        "{log}\n{}",
        text(&o)
    );
}
