//! End-to-end: `mgear capture --delta --dirty-bitmap NAME` reads only what a
//! qemu persistent dirty bitmap reports changed since the parent capture,
//! and the ingested result equals the changed disk.
//!
//! Needs qemu-img, qemu-io and qemu-nbd (Debian: qemu-utils).

use mgear_tests::{qemu_nbd, same_file, Background, Env};
use std::fs;
use std::path::Path;
use std::process::Command;

use rand::{RngCore, SeedableRng};

const MIB: u64 = 1 << 20;

/// Serve `disk.qcow2` read-only on a fresh socket, with extra qemu-nbd args.
fn serve(e: &Env, sock: &str, extra: &[&str]) -> (Background, String) {
    let sock = e.p(sock);
    let args = [&["-r", "-t", "-f", "qcow2"], extra].concat();
    let server = qemu_nbd(&args, &sock, &e.p("disk.qcow2"));
    (server, format!("nbd+unix:///?socket={}", sock.display()))
}

fn tool(cmd: &str, args: &[&str], dir: &Path) {
    let out = Command::new(cmd)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} (Debian: qemu-utils): {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The newest generation of `vm1` ingested into `out` is `disk.qcow2` as it is now (made
/// raw as `raw`).
fn ingests_as_the_disk(e: &Env, raw: &str, out: &str) {
    e.ingest("dir:mnt", "vm1")
        .untrusted()
        .target(&format!("file:{out}"))
        .ok();
    volume_is_the_disk_now(e, raw, out);
}

#[test]
fn cbt_delta_reads_only_dirty_chunks() {
    let e = Env::new();
    let dir = e.dir.path();
    e.ok(&["keygen", "--out", "target.key"]);
    // 48 MiB of random data: no holes, so only the bitmap can explain skips.
    let size = 48 * MIB;
    let mut disk = vec![0u8; size as usize];
    rand::rngs::SmallRng::seed_from_u64(5).fill_bytes(&mut disk);
    fs::write(e.p("disk.raw"), &disk).unwrap();
    drop(disk);
    tool(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "disk.raw",
            "disk.qcow2",
        ],
        dir,
    );
    fs::create_dir(e.p("mnt")).unwrap();
    let capture = || e.capture("dir:mnt", "vm1");

    // Generation 1: a full capture; the bitmap starts tracking right after.
    {
        let (_server, url) = serve(&e, "s1.sock", &[]);
        let c = capture().source(&url).json();
        assert_eq!(c["generation"], 1);
        assert_eq!(c["bytes_read"], size);
    }
    tool(
        "qemu-img",
        &["bitmap", "--add", "--enable", "disk.qcow2", "b0"],
        dir,
    );
    // 3 MiB at 5 MiB (chunks 5..=7) and 1 MiB at 40.5 MiB (chunks 40, 41).
    tool(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 0xab 5M 3M", "disk.qcow2"],
        dir,
    );
    tool(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 0x5c 41472k 1M", "disk.qcow2"],
        dir,
    );

    {
        let (_server, url) = serve(&e, "s2.sock", &["-B", "b0"]);
        // Without --delta, or from a file, the option is refused.
        let bitmap = ["--dirty-bitmap", "b0"];
        assert!(!capture().source(&url).args(&bitmap).run().status.success());
        let out = capture()
            .source("disk.raw")
            .arg("--delta")
            .args(&bitmap)
            .run();
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("needs an NBD source"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // A bitmap the export does not have: a clear error, nothing written.
        let out = capture()
            .source(&url)
            .args(&["--delta", "--dirty-bitmap", "nope"])
            .run();
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("does not export dirty bitmap nope"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );

        let c = capture()
            .source(&url)
            .args(&["--delta", "--dirty-bitmap", "b0"])
            .json();
        assert_eq!(
            (c["generation"].clone(), c["parent"].clone()),
            (2.into(), 1.into())
        );
        let read = c["bytes_read"].as_u64().unwrap();
        let skipped = c["unchanged_skipped"].as_u64().unwrap();
        // 5 dirty chunks of 1 MiB are read, the other 43 copied from the parent.
        assert_eq!(read, 5 * MIB, "{c}");
        assert_eq!(skipped, size - 5 * MIB, "{c}");
        // Chunks 5..=7 hold the same pattern: one record, two deduplicated.
        assert_eq!(c["stored_chunks"], 3, "{c}");
    }

    ingests_as_the_disk(&e, "changed.raw", "v.raw");
    // The changed disk really differs from generation 1.
    assert_ne!(
        fs::read(e.p("changed.raw")).unwrap(),
        fs::read(e.p("disk.raw")).unwrap()
    );

    // A bitmap created after the disk changed misses those changes: the delta that trusted it
    // finished as a wrong disk that verified. A sample of the chunks it calls clean is read
    // first, and one that differs from the parent refuses it.
    tool(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 0x77 8M 32M", "disk.qcow2"],
        dir,
    );
    tool(
        "qemu-img",
        &["bitmap", "--add", "--enable", "disk.qcow2", "late"],
        dir,
    );
    tool(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 0x66 44M 1M", "disk.qcow2"],
        dir,
    );
    {
        let (_server, url) = serve(&e, "s3.sock", &["-B", "late"]);
        let out = capture()
            .source(&url)
            .args(&["--delta", "--dirty-bitmap", "late"])
            .run();
        let text = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(2), "{text}");
        assert!(text.contains("the bitmap misses changes"), "{text}");
        // Without the bitmap the whole disk is read, and the result is right.
        capture().source(&url).arg("--delta").ok();
    }
    ingests_as_the_disk(&e, "late.raw", "late-v.raw");

    // A late bitmap given to `sync`: it reported the volume "verified" while the changes made
    // before the bitmap never reached it. Refused before anything is sent. (Changes over half
    // the disk: the sample draws one clean chunk at random in each of 32 stretches, so a
    // change to one chunk is caught only by chance.)
    e.ok(&["keygen", "--signing", "--out", "site.key"]);
    e.ingest("dir:mnt", "vm1")
        .untrusted()
        .target("file:vol.raw")
        .ok();
    let sync = |url: &str, addr: &str, bitmap: &[&str]| {
        let args = [
            &["sync", "--source", url, "--to", addr, "--name", "vm1"][..],
            &["--sign", "site.key"],
            bitmap,
        ]
        .concat();
        e.run(&args)
    };
    let ok = |o: &std::process::Output| {
        let text = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(0), "{text}");
        text
    };
    let log_path = e.p("serve.log");
    let start_serve = || {
        e.serve("dir:mnt", "vm1")
            .trust("site.pub")
            .listen_logging(fs::File::create(&log_path).unwrap())
    };
    {
        // A serve that never watched the volume cannot vouch for it: its first sync compares
        // every chunk, with a bitmap too; then it vouches, and the bitmap is trusted.
        let (_serve, addr) = start_serve();
        let log = fs::read_to_string(&log_path).unwrap();
        assert!(log.contains("the first sync compares every chunk"), "{log}");
        {
            let (_server, url) = serve(&e, "s4.sock", &["-B", "late"]);
            let text = ok(&sync(&url, &addr, &["--dirty-bitmap", "late"]));
            assert!(text.contains("the target cannot vouch"), "{text}");
        }
        tool(
            "qemu-io",
            &["-f", "qcow2", "-c", "write -P 0x12 2M 24M", "disk.qcow2"],
            dir,
        );
        tool(
            "qemu-img",
            &["bitmap", "--add", "--enable", "disk.qcow2", "later"],
            dir,
        );
        tool(
            "qemu-io",
            &["-f", "qcow2", "-c", "write -P 0x13 30M 1M", "disk.qcow2"],
            dir,
        );
        let before = fs::read(e.p("vol.raw")).unwrap();
        let (_server, url) = serve(&e, "s5.sock", &["-B", "later"]);
        let o = sync(&url, &addr, &["--dirty-bitmap", "later"]);
        let text = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(2), "{text}");
        assert!(text.contains("the bitmap misses changes"), "{text}");
        assert!(!text.contains("the target cannot vouch"), "{text}");
        assert!(
            fs::read(e.p("vol.raw")).unwrap() == before,
            "nothing was sent"
        );
        // Without the bitmap the whole disk is read, and the volume is the disk.
        ok(&sync(&url, &addr, &[]));
    }
    volume_is_the_disk_now(&e, "now.raw", "vol.raw");

    // Restarted with nothing written since its last sync: the serve's record vouches for the
    // volume, and the bitmap is trusted at once.
    let change = |pattern: &str, at: &str| {
        tool(
            "qemu-io",
            &[
                "-f",
                "qcow2",
                "-c",
                &format!("write -P {pattern} {at} 1M"),
                "disk.qcow2",
            ],
            dir,
        )
    };
    {
        let (_serve, addr) = start_serve();
        let log = fs::read_to_string(&log_path).unwrap();
        assert!(
            !log.contains("the first sync compares every chunk"),
            "{log}"
        );
        change("0x14", "6M");
        let (_server, url) = serve(&e, "s6.sock", &["-B", "later"]);
        let o = sync(&url, &addr, &["--dirty-bitmap", "later"]);
        let text = ok(&o);
        assert!(!text.contains("the target cannot vouch"), "{text}");
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains("chunks dirty in bitmap later"), "{out}");
    }
    volume_is_the_disk_now(&e, "now2.raw", "vol.raw");

    // Written by another program while no serve ran (an fsck, a boot: what the docs say to do
    // with serve stopped), then served again: the record no longer holds, and the first sync
    // compares every chunk. A bitmap sync that trusted the bitmap left the write in place and
    // said "verified" whenever the sample missed it.
    let foreign = || {
        use std::os::unix::fs::FileExt;
        let f = fs::OpenOptions::new()
            .write(true)
            .open(e.p("vol.raw"))
            .unwrap();
        f.write_all_at(&[0xa5; 8192], 40 * MIB).unwrap();
    };
    foreign();
    {
        let (_serve, addr) = start_serve();
        let log = fs::read_to_string(&log_path).unwrap();
        assert!(log.contains("the first sync compares every chunk"), "{log}");
        change("0x15", "10M");
        let (_server, url) = serve(&e, "s7.sock", &["-B", "later"]);
        let text = ok(&sync(&url, &addr, &["--dirty-bitmap", "later"]));
        assert!(text.contains("the target cannot vouch"), "{text}");
    }
    volume_is_the_disk_now(&e, "now3.raw", "vol.raw");

    // Written while serve holds it: serve sees it and hashes it again, and tells the next
    // sync, which compares every chunk.
    {
        let (_serve, addr) = start_serve();
        {
            let (_server, url) = serve(&e, "s8.sock", &["-B", "later"]);
            ok(&sync(&url, &addr, &["--dirty-bitmap", "later"]));
        }
        foreign();
        change("0x16", "14M");
        let (_server, url) = serve(&e, "s9.sock", &["-B", "later"]);
        let text = ok(&sync(&url, &addr, &["--dirty-bitmap", "later"]));
        assert!(text.contains("the target cannot vouch"), "{text}");
        let log = fs::read_to_string(&log_path).unwrap();
        assert!(log.contains("was written by something else"), "{log}");
    }
    volume_is_the_disk_now(&e, "now4.raw", "vol.raw");
}

/// `disk.qcow2` as it is now (made raw as `raw`) is byte for byte the volume `vol`.
fn volume_is_the_disk_now(e: &Env, raw: &str, vol: &str) {
    tool(
        "qemu-img",
        &["convert", "-f", "qcow2", "-O", "raw", "disk.qcow2", raw],
        e.dir.path(),
    );
    same_file(&e.p(raw), &e.p(vol));
}

/// A disk shrunk and grown back between the parent and the delta (`qemu-img resize`) reads
/// zeros at its end, which the bitmap (as old as the parent, as it must be) does not mark: the
/// delta copied the old last chunk from the parent and the ingested disk differed from the
/// source, exit 0, unless the spread sample happened to hit it. The last clean chunk is always
/// checked: the delta is refused, nothing stored.
#[test]
fn a_disk_shrunk_and_grown_back_is_not_trusted_to_its_bitmap() {
    let e = Env::new();
    let dir = e.dir.path();
    e.ok(&["keygen", "--out", "target.key"]);
    let size = 48 * MIB;
    let mut disk = vec![0u8; size as usize];
    rand::rngs::SmallRng::seed_from_u64(11).fill_bytes(&mut disk);
    fs::write(e.p("disk.raw"), &disk).unwrap();
    drop(disk);
    tool(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "disk.raw",
            "disk.qcow2",
        ],
        dir,
    );
    // The bitmap before the parent's capture, as the docs say.
    tool(
        "qemu-img",
        &["bitmap", "--add", "--enable", "disk.qcow2", "b0"],
        dir,
    );
    fs::create_dir(e.p("mnt")).unwrap();
    {
        let (_server, url) = serve(&e, "s1.sock", &[]);
        e.capture("dir:mnt", "vm1").source(&url).ok();
    }
    tool(
        "qemu-img",
        &["resize", "--shrink", "disk.qcow2", "47M"],
        dir,
    );
    tool("qemu-img", &["resize", "disk.qcow2", "48M"], dir);
    let (_server, url) = serve(&e, "s2.sock", &["-B", "b0"]);
    let out = e
        .capture("dir:mnt", "vm1")
        .source(&url)
        .args(&["--delta", "--dirty-bitmap", "b0"])
        .run();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("the bitmap calls chunk 47") && err.contains("reads differently now"),
        "{err}"
    );
    // Nothing stored: no empty unfinished generation 2 that verify (and a seal) then failed on.
    e.ok(&["verify", "--medium", "dir:mnt"]);
    assert!(!e.p("mnt/MGEAR/vm1/G0002").exists());
}
