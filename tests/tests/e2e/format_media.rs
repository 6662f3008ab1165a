//! The image format on real media: a mounted-style directory and a FAT32
//! image opened with `fatfs` (checked by `fsck.fat -n` afterwards), plus
//! interop with the `age` command-line tool on the key slot file.

use std::process::Command;

use image_format::age;
use image_format::store::fat::FormatOptions;
use image_format::store::{DirStore, FatStore};
use image_format::{
    list_captures, verify_full, verify_keyless, CaptureParams, CaptureReader, CaptureWriter,
    ChunkData, DataKey, GenerationState, NoProgress, Store, Unlock,
};
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};

const CS: u32 = 64 * 1024;

fn disk(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut d = vec![0u8; len];
    for (i, c) in d.chunks_mut(CS as usize).enumerate() {
        match i % 4 {
            0 => rng.fill_bytes(c),
            1 => {}
            2 => c
                .iter_mut()
                .enumerate()
                .for_each(|(j, b)| *b = (j % 61) as u8),
            _ => {
                let n = c.len().min(512);
                rng.fill_bytes(&mut c[..n]);
            }
        }
    }
    d
}

fn capture<S: Store>(
    store: S,
    p: CaptureParams,
    key: Option<DataKey>,
    data: &[u8],
) -> (image_format::CaptureSummary, DataKey) {
    let mut w = CaptureWriter::begin(store, p, key).expect("begin");
    let key = w.data_key().clone();
    let enc = w.encoder();
    for i in 0..w.chunk_count() {
        let s = (i * u64::from(CS)) as usize;
        let e = (s + CS as usize).min(data.len());
        w.append(enc.encode(i, &data[s..e]).expect("encode"))
            .expect("append");
        if i % 8 == 7 {
            w.checkpoint().expect("checkpoint");
        }
    }
    (w.finish().expect("finish"), key)
}

fn read_back<S: Store>(store: S, name: &str, gen: Option<u32>, unlock: &Unlock) -> Vec<u8> {
    let mut r = CaptureReader::open(store, name, gen, unlock).expect("open");
    let mut out = Vec::new();
    for i in 0..r.chunk_count() {
        match r.read_chunk(i).expect("read") {
            ChunkData::Zero { len } => out.resize(out.len() + len as usize, 0),
            ChunkData::Data(d) => out.extend_from_slice(&d),
        }
    }
    out
}

fn params(name: &str, len: usize, id: &age::x25519::Identity) -> CaptureParams {
    let mut p = CaptureParams::new(name, len as u64);
    p.chunk_size = CS;
    p.recipients = vec![id.to_public()];
    p.max_segment_bytes = 600 * 1024;
    p.source_desc = "format_media test".into();
    p
}

#[test]
fn directory_medium_round_trip_and_age_cli_opens_the_key_slot() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = DirStore::open(tmp.path()).unwrap();
    let id = age::x25519::Identity::generate();
    let data = disk(1, 3 * 1024 * 1024 + 4321);
    let (sum, key) = capture(&mut store, params("web01", data.len(), &id), None, &data);
    assert!(sum.segments >= 2, "{sum:?}");
    assert!(tmp.path().join("MGEAR/web01/G0001/SEG-00001").exists());
    assert_eq!(
        read_back(&mut store, "web01", None, &Unlock::Identity(id.clone())),
        data
    );
    let report = verify_keyless(&mut store, &mut NoProgress).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);

    // The key slot is a plain age file: the age CLI opens it with a
    // standard identity file and prints the documented 56-byte payload.
    use age::secrecy::ExposeSecret;
    let id_file = tmp.path().join("target.key");
    std::fs::write(&id_file, format!("{}\n", id.to_string().expose_secret())).unwrap();
    let out = Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(&id_file)
        .arg(tmp.path().join("MGEAR/web01/KEYS"))
        .output()
        .expect("the `age` tool (Debian package age) must be installed");
    assert!(
        out.status.success(),
        "age -d failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, slot_key) = image_format::layout::decode_key_payload(&out.stdout).unwrap();
    assert_eq!(&slot_key, key.as_bytes());
}

#[test]
fn fat32_image_capture_delta_and_fsck_clean() {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("medium.img");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&img)
        .unwrap();
    f.set_len(48 << 20).unwrap();
    FatStore::format(f, &FormatOptions::default()).unwrap();
    let open = || {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&img)
            .unwrap();
        FatStore::open(f).unwrap()
    };
    let id = age::x25519::Identity::generate();
    let data = disk(2, 2 * 1024 * 1024 + 100);
    let mut store = open();
    let (_, key) = capture(&mut store, params("db-02", data.len(), &id), None, &data);
    // A delta after a few writes on the source.
    let mut changed = data.clone();
    changed[5] ^= 1;
    changed[CS as usize * 9 + 7] ^= 1;
    let mut p = params("db-02", changed.len(), &id);
    p.delta = true;
    let (sum, _) = capture(&mut store, p, Some(key), &changed);
    assert_eq!(
        (sum.generation, sum.parent, sum.stored_chunks),
        (2, Some(1), 2),
        "{sum:?}"
    );
    store.unmount().unwrap();

    let out = Command::new("fsck.fat")
        .arg("-n")
        .arg(&img)
        .output()
        .expect("fsck.fat (dosfstools) must be installed");
    assert!(
        out.status.success(),
        "fsck.fat -n found problems:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let mut store = open();
    let list = list_captures(&mut store).unwrap();
    assert_eq!(list[0].name, "db-02");
    assert_eq!(list[0].generations.len(), 2);
    assert!(list[0]
        .generations
        .iter()
        .all(|g| g.state == GenerationState::Complete));
    let unlock = Unlock::Identity(id.clone());
    assert_eq!(read_back(&mut store, "db-02", Some(1), &unlock), data);
    assert_eq!(read_back(&mut store, "db-02", Some(2), &unlock), changed);
    let r = verify_full(&mut store, "db-02", None, &unlock, &mut NoProgress).unwrap();
    assert!(r.is_ok(), "{:?}", r.problems);
    store.unmount().unwrap();
}

/// sha256 of a file, by `sha256sum` (coreutils) as a user would check it.
fn sha256(path: &std::path::Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    assert!(out.status.success(), "sha256sum {}", path.display());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn read_only_commands_leave_a_fat_medium_byte_for_byte_unchanged() {
    let e = mgear_tests::Env::new();
    e.keygen();
    e.ok(&["keygen", "--signing", "--out", "site.key"]);
    std::fs::write(e.p("disk.raw"), disk(12, 3 << 20)).unwrap();
    let m = e.fat("medium.img", "64MiB");
    e.capture(&m, "web01")
        .source("disk.raw")
        .sign("site.key")
        .ok();
    let img = e.p("medium.img");
    let before = sha256(&img);
    let commands: [&[&str]; 4] = [
        &["inspect", "--medium", &m],
        &["verify", "--medium", &m],
        &[
            "verify",
            "--medium",
            &m,
            "--identity",
            "target.key",
            "--trust",
            "site.pub",
        ],
        &[
            "ingest",
            "--medium",
            &m,
            "--name",
            "web01",
            "--identity",
            "target.key",
            "--target",
            "file:vol.raw",
            "--trust",
            "site.pub",
        ],
    ];
    for args in commands {
        e.ok(args);
        assert_eq!(sha256(&img), before, "mgear {args:?} changed the medium");
    }
    mgear_tests::same_file(&e.p("disk.raw"), &e.p("vol.raw"));
    // Read-only means the image is opened O_RDONLY: a write-protected
    // image (as a locked SD card or `chmod a-w` gives) still verifies.
    let mut perm = std::fs::metadata(&img).unwrap().permissions();
    perm.set_readonly(true);
    std::fs::set_permissions(&img, perm).unwrap();
    if std::fs::OpenOptions::new().write(true).open(&img).is_err() {
        e.ok(&["verify", "--medium", &m]);
        assert_eq!(sha256(&img), before);
    }
}
