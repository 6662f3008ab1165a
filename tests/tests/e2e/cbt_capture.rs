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
    tool(
        "qemu-img",
        &["convert", "-f", "qcow2", "-O", "raw", "disk.qcow2", raw],
        e.dir.path(),
    );
    e.ingest("dir:mnt", "vm1")
        .untrusted()
        .target(&format!("file:{out}"))
        .ok();
    same_file(&e.p(raw), &e.p(out));
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
    let sync = |url: &str, addr: &str, bitmap: &[&str]| {
        let args = [
            &["sync", "--source", url, "--to", addr, "--name", "vm1"][..],
            &["--sign", "site.key"],
            bitmap,
        ]
        .concat();
        e.run(&args)
    };
    {
        let (_serve, addr) = e.serve("dir:mnt", "vm1").trust("site.pub").listen();
        let (_server, url) = serve(&e, "s4.sock", &["-B", "later"]);
        let o = sync(&url, &addr, &["--dirty-bitmap", "later"]);
        let text = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(2), "{text}");
        assert!(text.contains("the bitmap misses changes"), "{text}");
        assert!(
            fs::read(e.p("vol.raw")).unwrap() == before,
            "nothing was sent"
        );
        // Without the bitmap the whole disk is read, and the volume is the disk.
        let (_server, url) = serve(&e, "s5.sock", &[]);
        let o = sync(&url, &addr, &[]);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    tool(
        "qemu-img",
        &[
            "convert",
            "-f",
            "qcow2",
            "-O",
            "raw",
            "disk.qcow2",
            "now.raw",
        ],
        dir,
    );
    same_file(&e.p("now.raw"), &e.p("vol.raw"));

    // Another program wrote the volume while serve held it (a boot, an fsck): serve saw it and
    // hashed it again, but a sync with a dirty bitmap read only what the source changed, a
    // sample of the rest missed the target's change, and it said "verified". Serve now tells
    // the source, which reads every chunk for that session.
    {
        let log_path = e.p("serve.log");
        let (_serve, addr) = e
            .serve("dir:mnt", "vm1")
            .trust("site.pub")
            .listen_logging(fs::File::create(&log_path).unwrap());
        {
            use std::os::unix::fs::FileExt;
            let f = fs::OpenOptions::new()
                .write(true)
                .open(e.p("vol.raw"))
                .unwrap();
            f.write_all_at(&[0xa5; 8192], 40 * MIB).unwrap();
        }
        tool(
            "qemu-io",
            &["-f", "qcow2", "-c", "write -P 0x14 6M 1M", "disk.qcow2"],
            dir,
        );
        let (_server, url) = serve(&e, "s6.sock", &["-B", "later"]);
        let o = sync(&url, &addr, &["--dirty-bitmap", "later"]);
        let text = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(0), "{text}");
        assert!(text.contains("written by another program"), "{text}");
        let log = fs::read_to_string(&log_path).unwrap();
        assert!(log.contains("was written by something else"), "{log}");
    }
    tool(
        "qemu-img",
        &[
            "convert",
            "-f",
            "qcow2",
            "-O",
            "raw",
            "disk.qcow2",
            "now2.raw",
        ],
        dir,
    );
    same_file(&e.p("now2.raw"), &e.p("vol.raw"));
}
