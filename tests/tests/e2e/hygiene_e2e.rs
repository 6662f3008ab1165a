//! Nothing leaks on the host: what `mgear` writes that holds plaintext or
//! key material (ingested volumes, `.partial` files, ingest state, key
//! caches, generated passphrases) is private (0600 files, 0700 dirs), and a
//! symlink planted at any of those paths (as another user of a shared
//! directory would plant it) never redirects a write: the run is refused and
//! the file the link points to stays as it was. Weak passphrases are refused.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use mgear_tests::{output_text as text, Env};

const VICTIM: &[u8] = b"a file someone else cares about\n";

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
}

/// A small disk with data in every MiB but the last.
fn write_disk(path: &Path) {
    let d: Vec<u8> = (0..3u32 << 20)
        .map(|i| {
            if i >= 2 << 20 {
                0
            } else {
                (i.wrapping_mul(2654435761) >> 11) as u8
            }
        })
        .collect();
    fs::write(path, d).unwrap();
}

/// keygen (target and site), a dir: medium, capture `disk.raw` as web01, signed.
fn captured() -> Env {
    let e = Env::new();
    write_disk(&e.p("disk.raw"));
    e.keygen();
    e.ok(&["keygen", "--signing", "--out", "site.key"]);
    fs::create_dir(e.p("mnt")).unwrap();
    e.capture("dir:mnt", "web01")
        .source("disk.raw")
        .sign("site.key")
        .ok();
    e
}

fn ingest(e: &Env, extra: &[&str]) -> std::process::Output {
    e.ingest("dir:mnt", "web01")
        .target("file:vol.raw")
        .trust("site.pub")
        .args(extra)
        .run()
}

/// Where ingest keeps the state of a `file:vol.raw` target (its naming rule).
fn state_file(e: &Env) -> PathBuf {
    let abs = fs::canonicalize(e.p(".")).unwrap().join("vol.raw");
    let key = mgear_volume::key_of(&abs.to_string_lossy());
    e.p("state/mgear/ingest").join(format!("{key}.ingest"))
}

fn refused(o: &std::process::Output) {
    assert!(!o.status.success(), "must be refused: {}", text(o));
}

#[test]
fn ingest_outputs_are_private() {
    let e = captured();
    let o = ingest(&e, &[]);
    assert!(o.status.success(), "{}", text(&o));
    mgear_tests::same_file(&e.p("vol.raw"), &e.p("disk.raw"));
    assert_eq!(mode(&e.p("vol.raw")), 0o600, "decrypted volume");
    assert_eq!(mode(&e.p("state/mgear/ingest")), 0o700, "ingest state dir");
    assert_eq!(mode(&e.p("state/mgear/keys")), 0o700, "key cache dir");
    // One key per capture id, web01-<capture id>.key, and beside it what names the
    // source for a resume (.source).
    let cached: Vec<_> = fs::read_dir(e.p("state/mgear/keys"))
        .unwrap()
        .map(|f| f.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("web01-")
        })
        .collect();
    let of = |ext: &str| {
        cached
            .iter()
            .filter(|p| p.extension().is_some_and(|x| x == ext))
            .collect::<Vec<_>>()
    };
    assert_eq!(of("key").len(), 1, "{cached:?}");
    assert_eq!(of("source").len(), 1, "{cached:?}");
    // The notes a resume checks: the key slots as written, and the site key it signs with.
    assert_eq!(of("slots").len(), 1, "{cached:?}");
    assert_eq!(of("signer").len(), 1, "{cached:?}");
    // The name the source had when the generation began (`--source-was`).
    assert_eq!(of("srcname").len(), 1, "{cached:?}");
    assert_eq!(cached.len(), 5, "{cached:?}");
    for p in &cached {
        assert_eq!(mode(p), 0o600, "key cache {}", p.display());
    }
}

#[test]
fn planted_symlinks_never_redirect_a_write() {
    let e = captured();
    fs::write(e.p("victim"), VICTIM).unwrap();
    let victim = e.p("victim");

    // At the .partial path.
    symlink(&victim, e.p("vol.raw.partial")).unwrap();
    refused(&ingest(&e, &[]));
    assert_eq!(fs::read(&victim).unwrap(), VICTIM);
    fs::remove_file(e.p("vol.raw.partial")).unwrap();

    // At the state file path.
    fs::create_dir_all(e.p("state/mgear/ingest")).unwrap();
    symlink(&victim, state_file(&e)).unwrap();
    let o = ingest(&e, &[]);
    refused(&o);
    assert_eq!(fs::read(&victim).unwrap(), VICTIM);
    assert!(!e.p("vol.raw").exists(), "{}", text(&o));
    fs::remove_file(state_file(&e)).unwrap();

    // At the volume path: refused, with --force too (the verified volume was renamed over
    // the link, onto the link's file system); never written through. Once the link is
    // removed, the ingest goes ahead.
    symlink(&victim, e.p("vol.raw")).unwrap();
    refused(&ingest(&e, &[]));
    assert_eq!(fs::read(&victim).unwrap(), VICTIM);
    let o = ingest(&e, &["--force"]);
    refused(&o);
    assert!(text(&o).contains("is a symbolic link"), "{}", text(&o));
    assert_eq!(fs::read(&victim).unwrap(), VICTIM);
    assert!(fs::symlink_metadata(e.p("vol.raw"))
        .unwrap()
        .file_type()
        .is_symlink());
    fs::remove_file(e.p("vol.raw")).unwrap();
    let o = ingest(&e, &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(fs::read(&victim).unwrap(), VICTIM);
    mgear_tests::same_file(&e.p("vol.raw"), &e.p("disk.raw"));
    assert_eq!(mode(&e.p("vol.raw")), 0o600);

    // At the key cache path, before a capture writes it.
    symlink(&victim, e.p("state/mgear/keys/db02.key")).unwrap();
    let o = e.capture("dir:mnt", "db02").source("disk.raw").run();
    refused(&o);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("symlink"),
        "{}",
        text(&o)
    );
    assert_eq!(fs::read(&victim).unwrap(), VICTIM);
    // ...and a planted cache is not read through a link either.
    let o = e.run(&[
        "sync",
        "--source",
        "disk.raw",
        "--to",
        "127.0.0.1:9",
        "--name",
        "db02",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("symlink"),
        "{}",
        text(&o)
    );
}

#[test]
fn a_stale_partial_without_state_is_refused_not_adopted() {
    let e = captured();
    let planted = vec![0x5a; 3 << 20];
    fs::write(e.p("vol.raw.partial"), &planted).unwrap();
    let o = ingest(&e, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("refusing to adopt"),
        "{}",
        text(&o)
    );
    assert_eq!(fs::read(e.p("vol.raw.partial")).unwrap(), planted);
    assert!(!e.p("vol.raw").exists());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("run it again with --force"),
        "{}",
        text(&o)
    );
    // --force, as the message says: every chunk written again, the disk's zero tail too (the
    // .partial held 0x5a there, and a fresh file's holes are not written).
    let o = ingest(&e, &["--force"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("is written again from the start"),
        "{}",
        text(&o)
    );
    mgear_tests::same_file(&e.p("vol.raw"), &e.p("disk.raw"));
    // One of another size than the disk: the volume is made anew, of the disk's size.
    fs::remove_file(e.p("vol.raw")).unwrap();
    fs::remove_dir_all(e.p("state/mgear/ingest")).unwrap();
    fs::write(e.p("vol.raw.partial"), vec![0x5a; 5 << 20]).unwrap();
    let o = ingest(&e, &["--force"]);
    assert!(o.status.success(), "{}", text(&o));
    mgear_tests::same_file(&e.p("vol.raw"), &e.p("disk.raw"));
}

#[test]
fn weak_passphrases_are_refused_and_generated_ones_work() {
    let e = Env::new();
    write_disk(&e.p("disk.raw"));
    fs::create_dir(e.p("mnt")).unwrap();
    fs::write(e.p("weak"), "x\n").unwrap();
    let o = e.run(&[
        "capture",
        "--source",
        "disk.raw",
        "--medium",
        "dir:mnt",
        "--name",
        "web01",
        "--passphrase-file",
        "weak",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("at least 12 characters"),
        "{}",
        text(&o)
    );
    assert!(
        !e.p("mnt/MGEAR/web01").exists(),
        "nothing captured with a weak passphrase"
    );

    let o = e.ok(&[
        "capture",
        "--source",
        "disk.raw",
        "--medium",
        "dir:mnt",
        "--name",
        "web01",
        "--passphrase-file",
        "pw",
        "--passphrase-generate",
        "--passphrase-work-factor",
        "10",
    ]);
    assert_eq!(mode(&e.p("pw")), 0o600);
    // The summary says the slot was made (only `inspect` said so).
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("a passphrase slot too"),
        "{}",
        text(&o)
    );
    // The passphrase is what is tested here, not who wrote the capture.
    let v = e.json(&[
        "verify",
        "--medium",
        "dir:mnt",
        "--passphrase-file",
        "pw",
        "--allow-untrusted",
    ]);
    assert_eq!(v["ok"], true, "{v}");
    // It never overwrites an existing file.
    let o = e.run(&[
        "capture",
        "--source",
        "disk.raw",
        "--medium",
        "dir:mnt",
        "--name",
        "db02",
        "--passphrase-file",
        "pw",
        "--passphrase-generate",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

/// Four `keygen --force` of one path at once: each moved the others' new key aside or
/// removed it, and the runs ended with no secret key, or one that is not the .pub's, exit 0
/// (what was encrypted to that .pub could never be opened). They take turns now: every run
/// that says it wrote the key did, and the key left is the .pub's.
#[test]
fn concurrent_keygens_of_one_path_never_lose_the_secret_key() {
    let e = Env::new();
    fs::create_dir(e.p("kf")).unwrap();
    e.ok(&["keygen", "--out", "kf/k"]);
    let runs: Vec<_> = (0..4)
        .map(|_| {
            e.cmd(&["keygen", "--force", "--out", "kf/k"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for r in runs {
        let o = r.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    }
    let secret = fs::read_to_string(e.p("kf/k")).expect("the secret key is there");
    let public = fs::read_to_string(e.p("kf/k.pub")).unwrap();
    assert!(
        secret.contains(&format!("# public key: {}", public.trim())),
        "{secret}\n{public}"
    );
    // The replaced keys are all kept: the first and the four runs' but the last.
    let kept = fs::read_dir(e.p("kf"))
        .unwrap()
        .filter(|f| {
            f.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("k.replaced")
        })
        .count();
    assert_eq!(kept, 4);
}
