//! Key files: `mgear keygen`, and reading identities, recipients and passphrases.
//!
//! The target datacenter runs `mgear keygen --out target.key` once. It writes
//! `target.key` (mode 0600, the age X25519 identity `AGE-SECRET-KEY-1...`, in
//! the same layout as `age-keygen` so the `age` CLI reads it too) and
//! `target.pub` (the recipient `age1...`), which is all the capture site needs.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::error::Context;
use age::secrecy::ExposeSecret;
use zeroize::Zeroizing;

use crate::exit::usage;
use crate::keyfile::pub_path;

/// `mgear keygen`, typed (the binary's `cli::keys` fills it in from the flags).
#[derive(Debug)]
pub struct Keygen {
    /// Where to write the secret identity (0600); the public key goes next to it with `.pub`.
    pub out: PathBuf,
    /// Overwrite existing key files.
    pub force: bool,
    /// Make a capture site's Ed25519 signing key instead (KEY: PKCS#8 PEM, 0600;
    /// KEY.pub: give it to the target, which pins it with `--trust`).
    pub signing: bool,
}

/// `mgear keygen`.
pub fn keygen(args: Keygen) -> crate::Result<i32> {
    let json = crate::output::json();
    // Said by the directory: "creating nodir/x.key: No such file or directory".
    crate::output::refuse_missing_parent(
        &format!("--out {}", args.out.display()),
        &args.out,
        ", and keep it private: `chmod 700`",
    )?;
    if args.signing {
        let public = crate::sitekey::generate(&args.out, args.force)?;
        let fp = crate::sitekey::fingerprint(&public.to_bytes());
        if json {
            crate::output::emit(&serde_json::json!({
                "kind": "signing",
                "secret_key": args.out,
                "public_key": pub_path(&args.out),
                "fingerprint": fp,
            }))?;
            return Ok(crate::exit::OK);
        }
        println!(
            "signing key: {} (keep it at the capture site; `mgear capture --sign`)",
            args.out.display()
        );
        println!(
            "public key:  {} -> give this to the target datacenter (`--trust`)",
            pub_path(&args.out).display()
        );
        println!("fingerprint: {fp}");
        return Ok(crate::exit::OK);
    }
    let recipient = write_key_pair(&args.out, args.force)?;
    if json {
        crate::output::emit(&serde_json::json!({
            "kind": "target",
            "secret_key": args.out,
            "public_key": pub_path(&args.out),
            "recipient": recipient,
        }))?;
        return Ok(crate::exit::OK);
    }
    println!(
        "secret identity: {} (keep it at the target datacenter)",
        args.out.display()
    );
    println!(
        "public key:      {} -> give this to the capture site",
        pub_path(&args.out).display()
    );
    println!("{recipient}");
    Ok(crate::exit::OK)
}

/// Write a key pair at `out` without printing (bench); refuses to overwrite.
pub fn keygen_quiet(out: &Path) -> crate::Result<()> {
    write_key_pair(out, false).map(|_| ())
}

/// Write `out` and `out.pub`; returns the recipient.
fn write_key_pair(out: &Path, force: bool) -> crate::Result<String> {
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public().to_string();
    let secret = Zeroizing::new(format!(
        "# created by mgear keygen\n# public key: {recipient}\n{}\n",
        identity.to_string().expose_secret()
    ));
    crate::keyfile::write_pair(
        out,
        secret.as_bytes(),
        format!("{recipient}\n").as_bytes(),
        force,
        false,
    )?;
    Ok(recipient)
}

/// The key lines of an age key file (identities or recipients), with their 0-based line
/// numbers: `#` comments and blank lines skipped, whitespace and a UTF-8 BOM (some editors'
/// first bytes) trimmed.
fn key_lines(text: &str) -> Vec<(usize, &str)> {
    text.lines()
        .map(|l| l.trim().trim_start_matches('\u{feff}').trim())
        .enumerate()
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

/// Read an age X25519 identity file: its first identity.
pub fn read_identity(path: &Path) -> crate::Result<age::x25519::Identity> {
    let mut all = read_identities(path)?;
    Ok(all.swap_remove(0))
}

/// Read every identity of an age X25519 identity file (one per line, `#` comments and blank
/// lines skipped), as `age -d -i FILE` does: a file of two target keys opened a capture only
/// when its key came first ("does not open capture").
pub fn read_identities(path: &Path) -> crate::Result<Vec<age::x25519::Identity>> {
    let bytes = Zeroizing::new(crate::keyfile::read(path).map_err(|e| {
        crate::exit::coded_hint(
            crate::exit::USAGE,
            format!(
                "cannot read identity {}: {e}",
                crate::keyfile::named(path, false)
            ),
            // "by a path that exists" of a directory that does; and a lost key did not hear
            // of the backup slot.
            "give --identity the target's secret key file (`mgear keygen --out target.key` \
             wrote it, 0600: AGE-SECRET-KEY-1...), by its path; a capture made with a \
             passphrase slot also opens with --passphrase-file instead (`mgear inspect` lists \
             a capture's key slots)",
        )
    })?);
    // `age -p` over the key file (protecting it at rest) was called "not an age identity
    // (invalid Bech32 encoding)", or, unarmored, "not valid UTF-8".
    if bytes.starts_with(b"age-encryption.org/v1\n")
        || bytes.starts_with(b"-----BEGIN AGE ENCRYPTED FILE-----")
    {
        let shown = crate::output::sh(path.to_string_lossy());
        return Err(crate::exit::coded_hint(
            crate::exit::USAGE,
            format!(
                "{} is an age-encrypted file (a key protected with `age -p`?), not the key \
                 itself: mgear reads the AGE-SECRET-KEY-1... line",
                path.display()
            ),
            format!(
                "decrypt it for this run only, readable by you alone: `(umask 077; age -d -o \
                 /dev/shm/target.key {shown})` (a passphrase prompt), give --identity \
                 /dev/shm/target.key, then remove that copy"
            ),
        ));
    }
    let text = Zeroizing::new(
        std::str::from_utf8(&bytes)
            .map_err(|_| {
                usage(format!(
                    "{} is not an age identity (not text): give the .key file written by \
                     `mgear keygen`",
                    path.display()
                ))
            })?
            .to_owned(),
    );
    // A capture host's key cache (the data key itself): it read as "line 2 is not an age
    // identity (invalid Bech32)" where every other mix-up is named.
    if text.starts_with("# MotionGear data key cache") {
        return Err(usage(format!(
            "{} is a data key cache of a capture host (`mgear keys list` shows them), not the \
             target's identity: give --identity the target's .key (AGE-SECRET-KEY-1..., from \
             `mgear keygen`); a key cache is read by capture and sync at the source, by \
             --key-cache",
            path.display()
        )));
    }
    if let Some(e) = crate::keyfile::misplaced(
        &path.display().to_string(),
        &text,
        "--identity",
        crate::keyfile::KeyKind::TargetSecret,
    ) {
        return Err(e);
    }
    let lines = key_lines(&text);
    if lines.is_empty() {
        return Err(usage(format!(
            "{} holds no key: expected AGE-SECRET-KEY-1...",
            path.display()
        )));
    }
    let many = lines.len() > 1;
    let ids = lines
        .into_iter()
        .map(|(n, line)| {
            age::x25519::Identity::from_str(line).map_err(|e| {
                let at = if many {
                    format!(" (line {})", n + 1)
                } else {
                    String::new()
                };
                usage(format!(
                    "{}{at} is not an age identity ({e}): give the .key file written by `mgear \
                     keygen`",
                    path.display()
                ))
            })
        })
        .collect::<crate::Result<Vec<_>>>()?;
    crate::keyfile::warn_if_exposed(path);
    Ok(ids)
}

/// Read the recipients of one `--recipient`: the `age1...` string itself, or
/// a file holding one or more (age's recipients file: one key per line,
/// `#` comments and blank lines skipped). Every key of the file gets the
/// capture's key slot, as `age -R FILE` would; a key given twice counts once.
pub fn read_recipients(arg: &str) -> crate::Result<Vec<age::x25519::Recipient>> {
    let text = if arg.starts_with("age1") {
        arg.to_owned()
    } else {
        crate::keyfile::read_to_string(Path::new(arg)).map_err(|e| {
            crate::exit::coded_hint(
                crate::exit::USAGE,
                format!(
                    "cannot read recipient {}: {e}",
                    crate::keyfile::named(Path::new(arg), false)
                ),
                "give --recipient the target's public key: the .pub file `mgear keygen` \
                     wrote at the target (age1...), or the age1... key itself",
            )
        })?
    };
    if let Some(e) = crate::keyfile::misplaced(
        arg,
        &text,
        "--recipient",
        crate::keyfile::KeyKind::TargetPublic,
    ) {
        return Err(e);
    }
    let lines = key_lines(&text);
    if lines.is_empty() {
        return Err(usage(format!(
            "{arg} holds no public key: expected age1..."
        )));
    }
    let many = lines.len() > 1;
    let mut out: Vec<age::x25519::Recipient> = Vec::with_capacity(lines.len());
    for (n, line) in lines {
        let r = age::x25519::Recipient::from_str(line).map_err(|e| {
            let at = if many {
                format!(" (line {})", n + 1)
            } else {
                String::new()
            };
            usage(format!(
                "{arg}{at} is not an age public key ({e}): give the .pub file written by \
                 `mgear keygen` (or a file of age1... keys, one per line)"
            ))
        })?;
        if !out.iter().any(|o| o.to_string() == r.to_string()) {
            out.push(r);
        }
    }
    Ok(out)
}

/// The key slots a capture has on the medium: how many public keys its
/// recipient slot (`KEYS`) is encrypted to, and whether it has a passphrase
/// slot (`KEYPASS`). Read without any key: an age header lists one
/// `-> X25519` stanza per recipient (anonymous, so not which ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeySlots {
    /// Recipients of the recipient slot; `None`: no recipient slot.
    pub recipients: Option<usize>,
    /// A passphrase slot is there.
    pub passphrase: bool,
}

impl KeySlots {
    /// Read capture `name`'s slots (its stored spelling) from `store`.
    pub fn of(store: &mut dyn image_format::Store, name: &str) -> KeySlots {
        let dir = image_format::layout::capture_dir(name);
        let keys = format!("{dir}/{}", image_format::layout::KEYS_FILE);
        let pass = format!("{dir}/{}", image_format::layout::KEYPASS_FILE);
        let recipients = match store.len(&keys) {
            Ok(Some(n)) => {
                let mut head = vec![0u8; n.min(16 * 1024) as usize];
                let got = store.read_at(&keys, 0, &mut head).unwrap_or(0);
                let text = String::from_utf8_lossy(&head[..got]);
                Some(
                    text.lines()
                        .take_while(|l| !l.starts_with("---"))
                        .filter(|l| l.starts_with("-> X25519 "))
                        .count(),
                )
            }
            _ => None,
        };
        KeySlots {
            recipients,
            passphrase: matches!(store.len(&pass), Ok(Some(_))),
        }
    }
}

/// Read a passphrase file (first line, without the newline).
pub fn read_passphrase(path: &Path) -> crate::Result<Zeroizing<String>> {
    let cannot = |e: String| {
        usage(format!(
            "cannot read passphrase file {}: {e}",
            crate::keyfile::named(path, true)
        ))
    };
    let raw = crate::keyfile::read_head(path, PASSPHRASE_FILE_LIMIT).map_err(|e| match e {
        crate::keyfile::Head::TooLong(_) => {
            cannot(format!("{e}: the passphrase is the file's first line"))
        }
        e => cannot(e.to_string()),
    })?;
    crate::keyfile::warn_if_exposed_as(path, "passphrase file");
    // The first line must be text; what follows it (cut at the limit, perhaps mid-character)
    // only tells a blank first line from an empty file.
    let first = raw.split(|&b| b == b'\n').next().unwrap_or_default();
    std::str::from_utf8(first).map_err(|e| cannot(format!("its first line is not text ({e})")))?;
    let text = Zeroizing::new(String::from_utf8_lossy(&raw).into_owned());
    // A key file's first line is a fixed header (`# created by mgear keygen`, `-----BEGIN
    // PRIVATE KEY-----`) or a public key: long and varied enough to pass for a passphrase,
    // and one anyone can write down. A capture took it and a finder opened the medium.
    let kind = crate::keyfile::KeyKind::of(text.trim_start_matches('\u{feff}'));
    if kind != crate::keyfile::KeyKind::Unknown {
        return Err(usage(format!(
            "{} is {}, not a passphrase file: its first line would be the passphrase, and \
             that line is a header or a public key anyone can write down; give --passphrase-file \
             a file whose first line is a passphrase of your own (at capture, or let mgear \
             make one: --passphrase-file NEW_FILE --passphrase-generate). A target's key \
             pair is given as --recipient target.pub (capture) and --identity target.key \
             (ingest); nothing was done",
            path.display(),
            kind.what()
        )));
    }
    // A BOM an editor put first is not typed (Notepad saves one): kept, it made the passphrase
    // one the same text typed at the target did not match. CRLF goes with `lines`.
    let line = text
        .strip_prefix('\u{feff}')
        .unwrap_or(&text)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned();
    if key_file_line(&line) {
        // One line of a key file copied alone: a public key, a header, a key's base64.
        return Err(usage(format!(
            "the first line of {} is a line of a key file mgear writes (a public key, a \
             header, or a key's own base64), not a passphrase: anyone holding the public \
             files could write it down, or it gives away a secret key; give --passphrase-file \
             a file whose first line is a passphrase of your own (at capture, or let mgear \
             make one: --passphrase-file NEW_FILE --passphrase-generate); nothing was done",
            path.display()
        )));
    }
    if line.is_empty() {
        // The passphrase is the first line exactly (a passphrase may hold any
        // text, so later lines are never guessed at): a blank first line above
        // text is a file laid out by hand, and must be named as such.
        // A BOM alone is an empty file too (it was "later lines hold text").
        if text.trim_start_matches('\u{feff}').trim().is_empty() {
            return Err(usage(format!(
                "passphrase file {} is empty: the passphrase is the file's first line; write \
                 it there (or, at capture, let mgear make one: --passphrase-file NEW_FILE \
                 --passphrase-generate)",
                path.display()
            )));
        }
        return Err(usage(format!(
            "the first line of passphrase file {} is empty, though later lines hold text: the \
             passphrase is the first line, exactly as typed at capture; remove the blank \
             line(s) above it",
            path.display()
        )));
    }
    Ok(Zeroizing::new(line))
}

/// Whether `line` is a line of a key file mgear writes (`keygen`, `keygen --signing`): the
/// header comments, an age public or secret key, a PEM armour line, or the base64 of an
/// Ed25519 public (SPKI) or private (PKCS#8) key. Copied alone into a passphrase file, it
/// was taken as the capture's passphrase.
fn key_file_line(line: &str) -> bool {
    let l = line.trim_start_matches('\u{feff}').trim();
    let lower = l.to_ascii_lowercase();
    lower.starts_with("age1")
        || lower.contains("age-secret-key-1")
        || l.starts_with("-----BEGIN ")
        || l.starts_with("-----END ")
        || l.starts_with("MCowBQYDK2Vw")
        || l.starts_with("MC4CAQAwBQYDK2Vw")
        || (l.starts_with('#') && (lower.contains("mgear keygen") || lower.contains("public key:")))
}

/// The most of a passphrase file read (its first line is the passphrase).
const PASSPHRASE_FILE_LIMIT: u64 = 64 * 1024;

/// Shortest passphrase `capture` accepts.
pub const MIN_PASSPHRASE_CHARS: usize = 12;
/// Fewest different characters in it (refuses "aaaaaaaaaaaa", "121212121212").
pub const MIN_PASSPHRASE_DISTINCT: usize = 6;
/// Lowest scrypt work factor (log2 N) a production build writes.
pub const MIN_WORK_FACTOR: u8 = 18;

/// Refuse a passphrase an offline guesser would find: the passphrase slot
/// is on the medium, and a courier can try guesses at leisure.
pub fn check_strength(pass: &str, path: &Path) -> crate::Result<()> {
    let chars = pass.chars().count();
    let mut distinct: Vec<char> = pass.chars().collect();
    distinct.sort_unstable();
    distinct.dedup();
    if chars < MIN_PASSPHRASE_CHARS || distinct.len() < MIN_PASSPHRASE_DISTINCT {
        return Err(usage(format!(
            "the passphrase in {} is too weak to protect a capture that travels: it needs at least \
             {MIN_PASSPHRASE_CHARS} characters with at least {MIN_PASSPHRASE_DISTINCT} different ones \
             (it has {chars} and {}); use a few random words, or let mgear make one: \
             --passphrase-file NEW_FILE --passphrase-generate",
            path.display(),
            distinct.len()
        )));
    }
    Ok(())
}

/// Letters of generated passphrases: 32 symbols without look-alikes (0/o, 1/l).
const PASS_ALPHABET: &[u8; 32] = b"abcdefghijkmnpqrstuvwxyz23456789";

/// Write a new random passphrase (130 bits: 26 symbols of 5 bits, in groups
/// of 5 and 6) to `path`, which must not exist (created 0600, O_EXCL, never
/// through a symlink), and return it.
/// `--passphrase-generate` of a new capture onto a file that is there already.
pub fn passphrase_file_exists(path: &Path) -> crate::Error {
    // A dangling link reads as no file to `ls` and `exists`: "it already exists" puzzled.
    if let Ok(to) = std::fs::read_link(path) {
        return usage(format!(
            "cannot create passphrase file {}: it is a symbolic link (to {}), and a secret is \
             never written through one; remove the link or give a new path",
            path.display(),
            to.display()
        ));
    }
    usage(format!(
        "cannot create passphrase file {}: it already exists (--passphrase-generate writes a \
         new file and never overwrites one); give a new path, or drop --passphrase-generate to \
         use the passphrase in it",
        path.display()
    ))
}

/// The refusal of a passphrase file to be written where its directory does not exist (what
/// `--passphrase-generate` would meet; `--dry-run` checks it too).
pub fn passphrase_dir_missing(path: &Path) -> crate::Result<()> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if parent.is_dir() {
        return Ok(());
    }
    let what = match parent.exists() {
        true => "is not a directory",
        false => "does not exist",
    };
    Err(usage(format!(
        "cannot create passphrase file {}: directory {} {what}; give a path in an existing \
         directory (or create it first)",
        path.display(),
        parent.display()
    )))
}

pub fn generate_passphrase(path: &Path) -> crate::Result<Zeroizing<String>> {
    let mut raw = Zeroizing::new([0u8; 26]);
    getrandom::getrandom(&mut raw[..])
        .map_err(|e| crate::err!("the operating system's random generator failed: {e}"))?;
    let mut pass = Zeroizing::new(String::with_capacity(32));
    for (i, b) in raw.iter().enumerate() {
        if i > 0 && i % 5 == 0 && i < 25 {
            pass.push('-');
        }
        pass.push(PASS_ALPHABET[(b & 31) as usize] as char);
    }
    let mut f = image_format::private::create(path).map_err(|e| {
        // create() fails with NotFound only for a missing directory (the file
        // itself must not exist); saying "it must not exist yet" then misleads.
        if e.kind() == std::io::ErrorKind::NotFound || passphrase_dir_missing(path).is_err() {
            passphrase_dir_missing(path)
                .err()
                .unwrap_or_else(|| usage(e.to_string()))
        } else if e.kind() == std::io::ErrorKind::AlreadyExists || path.symlink_metadata().is_ok() {
            passphrase_file_exists(path)
        } else {
            usage(format!(
                "cannot create passphrase file {}: {e}",
                path.display()
            ))
        }
    })?;
    f.write_all(format!("{}\n", pass.as_str()).as_bytes())
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(pass)
}

/// The scrypt work factor a capture writes: age's default unless asked;
/// asking for less than 2^18 is allowed only in debug builds (the tests,
/// where each unlock would otherwise cost a second).
pub fn capture_work_factor(asked: Option<u8>) -> crate::Result<Option<u8>> {
    match asked {
        Some(n) if n < MIN_WORK_FACTOR && !cfg!(debug_assertions) => Err(usage(format!(
            "--passphrase-work-factor {n} is below the floor of {MIN_WORK_FACTOR} (2^{MIN_WORK_FACTOR}): \
             a lower factor makes guessing the passphrase cheap; leave the option out"
        ))),
        Some(n) if n == 0 || n > image_format::keys::MAX_WORK_FACTOR => Err(usage(format!(
            "--passphrase-work-factor {n}: give a log2 of the scrypt cost from {MIN_WORK_FACTOR} to {} \
             (the most a target reads: higher would take gigabytes of memory to unlock)",
            image_format::keys::MAX_WORK_FACTOR
        ))),
        other => Ok(other),
    }
}

/// The key cache directory.
pub fn key_cache_dir(arg: Option<PathBuf>) -> crate::Result<PathBuf> {
    if let Some(d) = arg {
        return Ok(d);
    }
    if let Some(s) = crate::target::xdg_state_home() {
        return Ok(s.join("mgear/keys"));
    }
    let home = std::env::var_os("HOME")
        .ok_or_else(|| usage("neither XDG_STATE_HOME nor HOME is set: pass --key-cache DIR"))?;
    Ok(PathBuf::from(home).join(".local/state/mgear/keys"))
}

/// The source-side data key cache, keyed by capture id.
///
/// One file per capture, `DIR/<name>-<capture id>.key` (0600), holding
/// `capture NAME`, `id HEX` and `key HEX` lines (image-format writes them).
/// Lookups go by the `id` line, never by the file name or the capture name
/// alone: `web01` captured onto a second medium is another capture (another
/// id and key) and gets its own file, so deltas and syncs of the first keep
/// working. Caches of older releases (`DIR/<name>.key`) are still read.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CachedKey {
    /// As text, lossily: a name that is not UTF-8 made `keys list --json` panic.
    #[serde(serialize_with = "lossy_path")]
    pub path: PathBuf,
    pub name: String,
    /// Lower-case hex; `None` for a cache of an older release without an id line.
    pub capture_id: Option<String>,
    /// Seconds since the epoch the file was last written.
    pub modified_unix: Option<u64>,
    /// The same time in ISO-8601 UTC, as every other time `--json` prints.
    pub modified: Option<String>,
}

/// A path as JSON text, whatever bytes its name holds (serde refuses a path that is not
/// UTF-8).
fn lossy_path<S: serde::Serializer>(p: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&p.to_string_lossy())
}

/// The cache file for capture `id` of `name`.
pub fn cache_file(dir: &Path, name: &str, id: &[u8; 16]) -> PathBuf {
    dir.join(format!("{name}-{}.key", crate::output::hex(id)))
}

/// Where a machine set's capture keeps the number of disks its unfinished
/// generation was started with (`crate::machine`), beside its key.
pub fn disk_count_file(dir: &Path, name: &str, id: &[u8; 16]) -> PathBuf {
    dir.join(format!("{name}-{}.disks", crate::output::hex(id)))
}

/// Where a capture keeps what identifies the disk its unfinished generation
/// reads (`crate::source::identity`), beside its key: one line, `generation G
/// source HEX`. The medium records the source only by name, and a name can
/// point at another disk between a stop and a resume.
pub fn source_identity_file(dir: &Path, name: &str, id: &[u8; 16]) -> PathBuf {
    dir.join(format!("{name}-{}.source", crate::output::hex(id)))
}

/// Where a capture notes the name its generation reads its source under (as the manifest
/// records it), beside its key: one line, `generation G name NAME`. A resume that names the
/// source otherwise (a disk unplugged and back as `/dev/sdc`, not `/dev/sdb`) is told the
/// name it had, for `--source-was`.
pub fn source_name_file(dir: &Path, name: &str, id: &[u8; 16]) -> PathBuf {
    dir.join(format!("{name}-{}.srcname", crate::output::hex(id)))
}

/// The source name noted for generation `generation` of capture `id` ([`source_name_file`]).
pub fn recorded_source_name(
    dir: &Path,
    name: &str,
    id: &[u8; 16],
    generation: u32,
) -> Option<String> {
    generation_note(&source_name_file(dir, name, id), generation, "name")
}

/// Notes `source` as the name generation `generation` of capture `id` reads its source under.
/// A name the one-line note cannot hold (a line break in a path) is not noted: the resume
/// then says less, nothing else changes.
pub fn record_source_name(
    dir: &Path,
    name: &str,
    id: &[u8; 16],
    generation: u32,
    source: &str,
) -> crate::Result<()> {
    if source.contains(['\n', '\r']) || source.trim() != source {
        return Ok(());
    }
    let path = source_name_file(dir, name, id);
    write_generation_note(&path, generation, "name", source)
        .with_context(|| format!("recording the source's name in {}", path.display()))
}

/// Where a capture keeps the digest of its key slot files as it wrote them
/// (`image_format::commit::key_slots_digest`), beside its key: one line,
/// `slots HEX`. A later run compares it with what the medium holds.
pub fn slots_digest_file(dir: &Path, name: &str, id: &[u8; 16]) -> PathBuf {
    dir.join(format!("{name}-{}.slots", crate::output::hex(id)))
}

/// Where a capture notes the site key its unfinished generation is signed with, beside its
/// key: one line, `generation G signer FINGERPRINT|none` ([`generation_note`]).
pub fn signer_note_file(dir: &Path, name: &str, id: &[u8; 16]) -> PathBuf {
    dir.join(format!("{name}-{}.signer", crate::output::hex(id)))
}

/// The key-slot digest noted for capture `id` when it was made, if this key cache
/// noted one (a capture made on another host, or by an older release, has none).
pub fn recorded_slots_digest(dir: &Path, name: &str, id: &[u8; 16]) -> Option<String> {
    let text = fs::read_to_string(slots_digest_file(dir, name, id)).ok()?;
    text.trim()
        .strip_prefix("slots ")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_string)
}

/// Notes `digest` as capture `id`'s key-slot digest (0600).
pub fn record_slots_digest(
    dir: &Path,
    name: &str,
    id: &[u8; 16],
    digest: &[u8; 32],
) -> crate::Result<()> {
    let path = slots_digest_file(dir, name, id);
    image_format::private::replace(
        &path,
        format!("slots {}\n", crate::output::hex(digest)).as_bytes(),
    )
    .with_context(|| format!("noting the key slots in {}", path.display()))
}

/// The identity recorded for generation `generation` of capture `id`, if
/// this key cache recorded one (a capture resumed on another host, or begun
/// by an older release, has none).
pub fn recorded_source_identity(
    dir: &Path,
    name: &str,
    id: &[u8; 16],
    generation: u32,
) -> Option<String> {
    generation_note(&source_identity_file(dir, name, id), generation, "source")
}

/// Records `identity` for generation `generation` of capture `id`.
pub fn record_source_identity(
    dir: &Path,
    name: &str,
    id: &[u8; 16],
    generation: u32,
    identity: &[u8; 32],
) -> crate::Result<()> {
    let path = source_identity_file(dir, name, id);
    write_generation_note(&path, generation, "source", &crate::output::hex(identity))
        .with_context(|| format!("recording the source's identity in {}", path.display()))
}

/// What a file beside a capture's cached key notes of one generation (the one line
/// `generation G WHAT VALUE`): VALUE, if it is of generation `generation`.
pub fn generation_note(path: &Path, generation: u32, what: &str) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    text.trim()
        .strip_prefix(&format!("generation {generation} {what} "))
        .map(str::to_string)
}

/// Notes `value` of generation `generation` in `path` ([`generation_note`]), 0600.
pub fn write_generation_note(
    path: &Path,
    generation: u32,
    what: &str,
    value: &str,
) -> std::io::Result<()> {
    image_format::private::replace(
        path,
        format!("generation {generation} {what} {value}\n").as_bytes(),
    )
}

/// Removes `NAME-*.new` in `dir` (a key or a note beside it): what a run killed while writing a
/// key cache file of capture `name` leaves (the file is written under that
/// name, synced, then renamed). Best effort: a leftover is only clutter.
pub fn remove_stale_temp(dir: &Path, name: &str) {
    let Ok(rd) = fs::read_dir(dir) else {
        return;
    };
    let prefix = format!("{name}-");
    for e in rd.flatten() {
        let file = e.file_name();
        let file = file.to_string_lossy();
        // `image_format::private::replace` names it `NAME-ID.key.RANDOM.new` (and the notes
        // beside the key `NAME-ID.signer.RANDOM.new`, `.slots.`, `.source.`, `.srcname.`, `.disks.`).
        // One another capture of the same name (onto another medium, at the same time) is
        // writing stays: removed between its write and its rename, that rename failed
        // ("No such file"); its writer holds a lock on it until then.
        if file.starts_with(&prefix) && file.ends_with(".new") {
            let _ = image_format::private::remove_if_abandoned(&e.path());
        }
    }
}

/// The `.key` files of `dir` that `cached_keys` did not list (it skips what it cannot read,
/// so a damaged entry went unsaid by `keys list`).
fn unlisted_key_files(dir: &Path, listed: &[CachedKey]) -> Vec<PathBuf> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "key"))
        .filter(|p| !listed.iter().any(|k| &k.path == p))
        .collect();
    out.sort();
    out
}

/// Every key cache file in `dir` (none if `dir` does not exist), by name then id.
pub fn cached_keys(dir: &Path) -> crate::Result<Vec<CachedKey>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        // A path through a file (XDG_STATE_HOME set to one): what to change, not "reconnect".
        Err(e) if e.raw_os_error() == Some(20) => {
            return Err(crate::exit::coded_hint(
                crate::exit::USAGE,
                format!(
                    "reading key cache {}: {e}: a file stands where a directory of that path is",
                    dir.display()
                ),
                "point the key cache at a directory: --key-cache DIR, or XDG_STATE_HOME (or \
                 HOME) set to a directory",
            ))
        }
        Err(e) => return Err(e).with_context(|| format!("reading key cache {}", dir.display())),
    };
    let mut out = Vec::new();
    for e in rd {
        let path = e
            .with_context(|| format!("reading key cache {}", dir.display()))?
            .path();
        if path.extension().is_none_or(|x| x != "key") {
            continue;
        }
        // A link planted in the cache would let someone else's file stand
        // in for a key (or a write land elsewhere): refuse, do not skip.
        if fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(usage(format!(
                "key cache file {} is a symlink: refusing to use it for secret material (remove it)",
                path.display()
            )));
        }
        let Ok(bytes) = image_format::private::read(&path) else {
            continue;
        };
        let text = String::from_utf8_lossy(&bytes);
        let Some(name) = text
            .lines()
            .find_map(|l| l.strip_prefix("capture "))
            .map(|n| n.trim().to_string())
        else {
            continue;
        };
        // A file cut short (no whole `key` line) holds no key: listed, it read as one, and
        // `keys list` named it among the keys it has. What every reader of the key takes.
        if image_format::DataKey::load_cache(&path, &name).is_err() {
            continue;
        }
        let capture_id = image_format::DataKey::cached_capture_id(&path)
            .ok()
            .flatten()
            .map(|id| crate::output::hex(&id));
        let modified_unix = fs::metadata(&path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs());
        out.push(CachedKey {
            path,
            name,
            capture_id,
            modified_unix,
            modified: modified_unix.map(crate::output::iso_time),
        });
    }
    out.sort_by(|a, b| (&a.name, &a.capture_id).cmp(&(&b.name, &b.capture_id)));
    Ok(out)
}

/// The cache file holding the key of capture `id` (named `name`, compared
/// without case): the file with that id line, else an older release's
/// `name.key` without an id line (the key check at capture decides).
/// Removes cached key `k` and what goes with it (a set's disk count, the source's identity
/// and name, the key slots' recipients, the signer).
pub fn remove_cached(k: &CachedKey) -> crate::Result<()> {
    fs::remove_file(&k.path).with_context(|| format!("removing {}", k.path.display()))?;
    for ext in ["disks", "source", "srcname", "slots", "signer"] {
        let _ = fs::remove_file(k.path.with_extension(ext));
    }
    Ok(())
}

pub fn find_cached(dir: &Path, name: &str, id: &[u8; 16]) -> crate::Result<Option<CachedKey>> {
    let want = crate::output::hex(id);
    let all = cached_keys(dir)?;
    if let Some(k) = all
        .iter()
        .find(|k| k.capture_id.as_deref() == Some(want.as_str()))
    {
        return Ok(Some(k.clone()));
    }
    if let Some(k) = all
        .into_iter()
        .find(|k| k.capture_id.is_none() && k.name.eq_ignore_ascii_case(name))
    {
        return Ok(Some(k));
    }
    // The file this capture's key is kept in is there but reads as no key (emptied, cut
    // short, replaced by a directory): said as such, not "its key is not in the cache".
    let want_suffix = format!("-{want}.key");
    let damaged = fs::read_dir(dir).ok().and_then(|rd| {
        rd.filter_map(|e| e.ok().map(|e| e.path())).find(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.len() > want_suffix.len()
                    && n.to_ascii_lowercase().ends_with(&want_suffix)
                    && n[..n.len() - want_suffix.len()].eq_ignore_ascii_case(name)
            })
        })
    });
    match damaged {
        Some(p) => Err(usage(format!(
            "the key cache file {} of capture {name} (capture id {want}) is damaged: it holds no \
             key (empty, cut short, or not a file); restore it from a backup of the key cache, \
             or unlock the capture another way (--passphrase-file, if it has a passphrase slot)",
            p.display()
        ))),
        None => Ok(None),
    }
}

/// `mgear keys ...`: the data keys this capture host keeps for deltas and syncs.
#[derive(Debug)]
pub enum Request {
    /// List the cached data keys: capture name, capture id, file.
    List {
        /// Key cache directory [default: $XDG_STATE_HOME/mgear/keys or ~/.local/state/mgear/keys].
        key_cache: Option<PathBuf>,
        /// Print one JSON object.
        json: bool,
    },
    /// Delete cached data keys: no delta or sync of that capture can run here afterwards.
    Forget {
        /// Key cache directory [default: $XDG_STATE_HOME/mgear/keys or ~/.local/state/mgear/keys].
        key_cache: Option<PathBuf>,
        /// The capture id (as `keys list` or the capture receipt shows it).
        capture_id: Option<String>,
        /// Every key of this capture name (case-insensitive); with several, also --all.
        name: Option<String>,
        /// With --name: forget all of that name's captures.
        all: bool,
    },
}

/// Run `mgear keys`.
pub fn keys(request: Request) -> crate::Result<i32> {
    match request {
        Request::List { key_cache, json } => {
            let dir = key_cache_dir(key_cache)?;
            let keys = cached_keys(&dir)?;
            let unreadable = unlisted_key_files(&dir, &keys);
            for p in &unreadable {
                let why = match image_format::private::read(p) {
                    Err(e) => format!("cannot be read ({e})"),
                    Ok(_) => {
                        "is not a data key (damaged, or not written by `mgear capture`)".to_string()
                    }
                };
                // `keys forget` matches what it can read only: how to be rid of it is `rm`.
                let stem = p.with_extension("");
                eprintln!(
                    "mgear: warning: {} {why}: not listed; a later --delta or sync of the \
                     capture whose key it held needs that capture's --passphrase-file. To \
                     remove it and the files kept beside it: rm {}.*",
                    p.display(),
                    crate::output::sh(stem.display().to_string())
                );
            }
            if json {
                let unreadable: Vec<String> = unreadable
                    .iter()
                    .map(|p| p.to_string_lossy().into_owned())
                    .collect();
                crate::progress::print_json(&serde_json::json!({
                    "command": "keys list",
                    "key_cache": dir.to_string_lossy(),
                    "keys": keys,
                    "unreadable": unreadable,
                }))?;
            } else if keys.is_empty() {
                println!("no cached data keys in {}", dir.display());
            } else {
                println!("{:<32} {:<32} file", "name", "capture id");
                for k in &keys {
                    println!(
                        "{:<32} {:<32} {}",
                        k.name,
                        k.capture_id.as_deref().unwrap_or("(none: older cache)"),
                        k.path.display()
                    );
                }
            }
            Ok(crate::exit::OK)
        }
        Request::Forget {
            key_cache,
            capture_id,
            name,
            all,
        } => {
            // A disk of a set shares the set's key: forgetting one disk's
            // entry leaves the key under the set's name (deltas and syncs of
            // every disk still run). The set is forgotten whole.
            // `DB01.D1` too: names are compared without case.
            let lower = name.as_deref().map(str::to_ascii_lowercase);
            if let Some((set, _)) = lower
                .as_deref()
                .and_then(image_format::set::parse_disk_stream_name)
            {
                return Err(usage(format!(
                    "{} is a disk of machine set {set}, whose disks share one key: forget the \
                     set's key with --name {set}",
                    name.as_deref().unwrap_or_default()
                )));
            }
            let dir = key_cache_dir(key_cache)?;
            let keys = cached_keys(&dir)?;
            let mut chosen: Vec<&CachedKey> = keys
                .iter()
                .filter(|k| {
                    capture_id.as_deref().is_none_or(|id| {
                        k.capture_id
                            .as_deref()
                            .is_some_and(|c| c.eq_ignore_ascii_case(id.trim()))
                    }) && name.as_deref().is_none_or(|n| {
                        // A machine set's name covers its disks' entries (`db01.d0`, ...).
                        k.name.eq_ignore_ascii_case(n)
                            || image_format::set::parse_disk_stream_name(&k.name)
                                .is_some_and(|(set, _)| set.eq_ignore_ascii_case(n))
                    })
                })
                .collect();
            // One capture (a set: its disks' entries too) is one key: counted by id.
            let mut ids: Vec<&str> = chosen
                .iter()
                .map(|k| k.capture_id.as_deref().unwrap_or("none"))
                .collect();
            ids.sort_unstable();
            ids.dedup();
            // A capture id is 32 hex digits: "no cached key
            // matches" of `zz` did not say the id itself was malformed.
            if let Some(id) = capture_id
                .as_deref()
                .map(str::trim)
                .filter(|id| id.is_empty() || !id.chars().all(|c| c.is_ascii_hexdigit()))
            {
                return Err(usage(format!(
                    "--capture-id {id:?} is not a capture id: it is hex digits (32 of them, as \
                     `mgear keys list` shows)"
                )));
            }
            if chosen.is_empty() {
                return Err(usage(format!(
                    "no cached key matches in {} (see `mgear keys list`)",
                    dir.display()
                )));
            }
            if ids.len() > 1 && capture_id.is_none() && !all {
                return Err(usage(format!(
                    "{} cached keys have that name (capture ids {}): pass --capture-id ID, or --all to forget every one",
                    ids.len(),
                    ids.join(", ")
                )));
            }
            // One data key cached under several names (machines captured with
            // --dedup-across-machines share their key and capture id): forgetting it by one
            // name left it under the other, and a delta "that can no longer run" ran.
            let shared: Vec<&CachedKey> = keys
                .iter()
                .filter(|k| {
                    !chosen.iter().any(|c| c.path == k.path)
                        && k.capture_id.as_deref().is_some_and(|id| ids.contains(&id))
                })
                .collect();
            chosen.extend(shared);
            // Every one checked before any goes: a set's entries are one key.
            let held = chosen
                .iter()
                .map(|k| crate::lock::free_key(&k.path, &k.name))
                .collect::<crate::Result<Vec<_>>>()?;
            // Read before they go: whether a passphrase slot still opens each capture.
            let passphrase: Vec<(String, Option<bool>)> = chosen
                .iter()
                .map(|k| {
                    let slots = image_format::DataKey::cached_slots(&k.path).ok().flatten();
                    (
                        k.capture_id.clone().unwrap_or_else(|| "none".into()),
                        slots.map(|s| s.passphrase),
                    )
                })
                .collect();
            for k in &chosen {
                remove_cached(k)?;
            }
            drop(held);
            let forgot: Vec<(String, Vec<&str>)> = ids
                .iter()
                .map(|id| {
                    let names = chosen
                        .iter()
                        .filter(|k| k.capture_id.as_deref().unwrap_or("none") == *id)
                        .map(|k| k.name.as_str())
                        .collect();
                    (id.to_string(), names)
                })
                .collect();
            if crate::output::json() {
                crate::progress::print_json(&serde_json::json!({
                    "command": "keys forget",
                    "key_cache": dir,
                    "forgotten": forgot
                        .iter()
                        .map(|(id, names)| serde_json::json!({"capture_id": id, "names": names}))
                        .collect::<Vec<_>>(),
                }))?;
            } else {
                for (id, names) in &forgot {
                    let shared = match names.len() {
                        1 => String::new(),
                        _ => " (one key: those machines were captured with \
                              --dedup-across-machines)"
                            .to_string(),
                    };
                    // Said of this capture: it offered --passphrase-file of one that has no
                    // such slot, and never said what is left to do then.
                    let slot = passphrase
                        .iter()
                        .find(|(of, _)| of == id)
                        .and_then(|(_, p)| *p);
                    let then = match slot {
                        Some(true) => {
                            "; its passphrase slot still opens it: give --passphrase-file"
                        }
                        Some(false) => {
                            "; it has no passphrase slot, so nothing opens it here any more: \
                             capture the disk again, in full, under another name, for deltas \
                             and syncs from this host"
                        }
                        None => {
                            "; a capture with a passphrase slot still opens with --passphrase-file"
                        }
                    };
                    println!(
                        "forgot the data key of {}{shared} (capture id {id}): deltas, syncs and the resume of an unfinished generation of it can no longer run on this host{then}",
                        names.join(", ")
                    );
                }
            }
            Ok(crate::exit::OK)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A directory given for a passphrase or identity file is said to be one (it was "Is a
    /// directory", after a warning about its mode).
    #[test]
    fn a_directory_given_for_a_secret_file_is_named_as_one() {
        let dir = tempfile::tempdir().unwrap();
        let pass = read_passphrase(dir.path()).err().unwrap().to_string();
        assert!(pass.contains("it is a directory, not a file"), "{pass}");
        let id = read_identity(dir.path()).err().unwrap().to_string();
        assert!(id.contains("it is a directory, not a file"), "{id}");
    }

    /// An identity file of several keys yields them all (age's `-i FILE`: any may open the
    /// capture; only the first was read), and a recipient file's BOM is no part of the key.
    #[test]
    fn an_identity_file_of_several_keys_and_a_bom_recipient_read() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.key"), dir.path().join("b.key"));
        keygen_quiet(&a).unwrap();
        keygen_quiet(&b).unwrap();
        let both = dir.path().join("both.key");
        let text = format!(
            "# two targets\n{}\n{}",
            std::fs::read_to_string(&a).unwrap(),
            std::fs::read_to_string(&b).unwrap()
        );
        std::fs::write(&both, text).unwrap();
        let ids = read_identities(&both).unwrap();
        let publics: Vec<String> = ids.iter().map(|i| i.to_public().to_string()).collect();
        assert_eq!(
            publics,
            [
                read_identity(&a).unwrap().to_public().to_string(),
                read_identity(&b).unwrap().to_public().to_string()
            ]
        );
        let bom = dir.path().join("bom.pub");
        let public = std::fs::read_to_string(crate::keyfile::pub_path(&a)).unwrap();
        std::fs::write(&bom, format!("\u{feff}{public}")).unwrap();
        let r = read_recipients(bom.to_str().unwrap()).unwrap();
        assert_eq!(r[0].to_string(), publics[0]);
        // A BOM and then spaces or a tab on the key's line (it was "invalid Bech32").
        std::fs::write(&bom, format!("\u{feff} \t{public}")).unwrap();
        let r = read_recipients(bom.to_str().unwrap()).unwrap();
        assert_eq!(r[0].to_string(), publics[0]);
        let secret = std::fs::read_to_string(&a).unwrap();
        let spaced = dir.path().join("spaced.key");
        let line = secret
            .lines()
            .find(|l| l.starts_with("AGE-SECRET-KEY"))
            .unwrap();
        std::fs::write(&spaced, format!("\u{feff}  {line}\n")).unwrap();
        assert_eq!(
            read_identity(&spaced).unwrap().to_public().to_string(),
            publics[0]
        );
    }

    #[test]
    fn a_passphrase_protected_key_file_is_named_as_one() {
        let dir = tempfile::tempdir().unwrap();
        // What `age -p` writes, binary and armored (`-a`): its header.
        for (name, head) in [
            (
                "bin.key",
                &b"age-encryption.org/v1\n-> scrypt c2FsdA 18\n\xff\xfe"[..],
            ),
            (
                "arm.key",
                b"-----BEGIN AGE ENCRYPTED FILE-----\nYWdlLWVuY3J5cHRpb24=\n",
            ),
        ] {
            let p = dir.path().join(name);
            fs::write(&p, head).unwrap();
            let Err(e) = read_identity(&p) else {
                panic!("{name} read as a key")
            };
            assert_eq!(crate::exit::code_of(&e), crate::exit::USAGE);
            let text = format!("{e:#} {}", crate::exit::hint(&e, "ingest"));
            assert!(text.contains("is an age-encrypted file"), "{text}");
            assert!(text.contains("age -d -o"), "{text}");
        }
        // Not text at all: said so, not "invalid Bech32".
        let p = dir.path().join("junk.key");
        fs::write(&p, b"\xff\x00\x01").unwrap();
        let Err(e) = read_identity(&p) else {
            panic!("junk read as a key")
        };
        let e = e.to_string();
        assert!(e.contains("not an age identity (not text)"), "{e}");
    }

    #[test]
    fn the_key_cache_is_keyed_by_capture_id() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = ([1u8; 16], [2u8; 16]);
        let ka = image_format::DataKey::from_bytes([7; 32]);
        let kb = image_format::DataKey::from_bytes([8; 32]);
        // web01 on two media: two captures, two files.
        ka.save_cache_with_id(&cache_file(dir.path(), "web01", &a), "web01", &a)
            .unwrap();
        kb.save_cache_with_id(&cache_file(dir.path(), "web01", &b), "web01", &b)
            .unwrap();
        let all = cached_keys(dir.path()).unwrap();
        assert_eq!(all.len(), 2);
        let found = find_cached(dir.path(), "WEB01", &a).unwrap().unwrap();
        let key = image_format::DataKey::load_cache(&found.path, &found.name).unwrap();
        assert_eq!(key.as_bytes(), &[7; 32]);
        let found = find_cached(dir.path(), "web01", &b).unwrap().unwrap();
        let key = image_format::DataKey::load_cache(&found.path, &found.name).unwrap();
        assert_eq!(key.as_bytes(), &[8; 32]);
        // Its file emptied, or cut short: damaged, not "no key in the cache" (exit 2 with
        // what to restore; cut short was an I/O error's "reconnect it").
        let text = fs::read_to_string(&found.path).unwrap();
        fs::write(&found.path, &text[..text.find("key ").unwrap() + 10]).unwrap();
        let e = image_format::DataKey::load_cache(&found.path, "web01").unwrap_err();
        assert!(matches!(e, image_format::Error::NeedKey { .. }), "{e}");
        assert!(
            e.to_string().contains("is damaged") && e.to_string().contains("restore it"),
            "{e}"
        );
        fs::write(&found.path, "").unwrap();
        let e = find_cached(dir.path(), "web01", &b).unwrap_err();
        assert_eq!(crate::exit::code_of(&e), crate::exit::USAGE);
        assert!(e.to_string().contains("is damaged: it holds no key"), "{e}");
        fs::write(&found.path, &text).unwrap();
        assert!(find_cached(dir.path(), "web01", &[3; 16])
            .unwrap()
            .is_none());
        // An older release's cache without an id serves its name only.
        ka.save_cache(&dir.path().join("db02.key"), "db02").unwrap();
        assert_eq!(
            find_cached(dir.path(), "db02", &[3; 16])
                .unwrap()
                .unwrap()
                .path,
            dir.path().join("db02.key")
        );
        assert!(find_cached(dir.path(), "db03", &[3; 16]).unwrap().is_none());
        // forget refuses to guess between two captures of one name.
        let e = keys(Request::Forget {
            key_cache: Some(dir.path().into()),
            capture_id: None,
            name: Some("web01".into()),
            all: false,
        })
        .unwrap_err();
        assert!(e.to_string().contains("--capture-id"), "{e}");
        keys(Request::Forget {
            key_cache: Some(dir.path().into()),
            capture_id: Some(crate::output::hex(&a)),
            name: None,
            all: false,
        })
        .unwrap();
        assert!(find_cached(dir.path(), "web01", &a).unwrap().is_none());
        assert!(find_cached(dir.path(), "web01", &b).unwrap().is_some());
    }

    #[test]
    fn keygen_writes_a_usable_pair() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("t.key");
        keygen(Keygen {
            out: key.clone(),
            force: false,
            signing: false,
        })
        .unwrap();
        let mode = fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let id = read_identity(&key).unwrap();
        let rcpt = read_recipients(pub_path(&key).to_str().unwrap())
            .unwrap()
            .remove(0);
        assert_eq!(id.to_public().to_string(), rcpt.to_string());
        // A second keygen without --force must not clobber the key.
        let err = keygen(Keygen {
            out: key.clone(),
            force: false,
            signing: false,
        })
        .unwrap_err();
        assert_eq!(crate::exit::code_of(&err), crate::exit::USAGE);
        // Into a directory that is not there: said by the directory, for both kinds.
        for signing in [false, true] {
            let out = dir.path().join("no dir/x.key");
            let err = keygen(Keygen {
                out: out.clone(),
                force: false,
                signing,
            })
            .unwrap_err();
            assert_eq!(crate::exit::code_of(&err), crate::exit::USAGE);
            assert!(
                err.to_string().contains("does not exist: create it"),
                "{err}"
            );
            assert!(err.to_string().contains("no dir'`"), "{err}");
            assert!(!out.parent().unwrap().exists());
        }
    }

    #[test]
    fn weak_passphrases_are_refused_and_generated_ones_are_strong_and_private() {
        let p = Path::new("pw");
        for weak in ["x", "password", "aaaaaaaaaaaaaaaa", "121212121212"] {
            let e = check_strength(weak, p).unwrap_err();
            assert_eq!(crate::exit::code_of(&e), crate::exit::USAGE);
            assert!(e.to_string().contains("at least 12 characters"), "{e}");
        }
        check_strength("correct horse battery staple", p).unwrap();

        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        let g = generate_passphrase(&f).unwrap();
        assert_eq!(g.len(), 26 + 4);
        check_strength(&g, &f).unwrap();
        assert_eq!(read_passphrase(&f).unwrap().as_str(), g.as_str());
        let mode = fs::metadata(&f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Never overwrites, never writes through a planted symlink.
        assert!(generate_passphrase(&f).is_err());
        let victim = dir.path().join("victim");
        fs::write(&victim, "keep").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        assert!(generate_passphrase(&link).is_err());
        assert_eq!(fs::read_to_string(&victim).unwrap(), "keep");
        // A dangling link is named as a link ("it already exists" of what `ls` shows absent).
        let dangling = dir.path().join("dangling");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).unwrap();
        let m = generate_passphrase(&dangling).unwrap_err().to_string();
        assert!(m.contains("is a symbolic link"), "{m}");
        assert!(!dir.path().join("nowhere").exists());
        assert_ne!(generate_passphrase(&dir.path().join("pw2")).unwrap(), g);
        // Each refusal says what is actually wrong.
        let m = generate_passphrase(&f).unwrap_err().to_string();
        assert!(m.contains("it already exists"), "{m}");
        let m = generate_passphrase(&dir.path().join("nodir/pwg"))
            .unwrap_err()
            .to_string();
        assert!(m.contains("nodir does not exist"), "{m}");
        assert!(!m.contains("must not exist yet"), "{m}");
    }

    #[test]
    fn passphrase_files_with_a_blank_first_line_say_so() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw5");
        fs::write(&f, "\n\nfoo bar baz qux quux\n").unwrap();
        let e = read_passphrase(&f).unwrap_err();
        assert_eq!(crate::exit::code_of(&e), 2);
        let m = e.to_string();
        assert!(m.contains("first line of passphrase file"), "{m}");
        assert!(m.contains("later lines hold text"), "{m}");
        fs::write(&f, "\n \n").unwrap();
        let m = read_passphrase(&f).unwrap_err().to_string();
        assert!(
            m.contains("pw5 is empty: the passphrase is the file's first line"),
            "{m}"
        );
    }

    /// Notepad's BOM stayed in the passphrase (its CRLF did not): the same text typed into a
    /// file at the target did not open the capture.
    #[test]
    fn a_bom_and_a_crlf_are_not_part_of_the_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        for text in [
            "\u{feff}correct horse battery staple\r\n",
            "correct horse battery staple\r\n",
            "correct horse battery staple",
        ] {
            fs::write(&f, text).unwrap();
            assert_eq!(
                read_passphrase(&f).unwrap().as_str(),
                "correct horse battery staple",
                "{text:?}"
            );
        }
        // Only the first: a second is typed text.
        fs::write(&f, "\u{feff}\u{feff}correct horse battery staple\n").unwrap();
        assert!(read_passphrase(&f).unwrap().starts_with('\u{feff}'));
        // A BOM and nothing else is an empty file.
        for text in ["\u{feff}", "\u{feff}\r\n"] {
            fs::write(&f, text).unwrap();
            let m = read_passphrase(&f).unwrap_err().to_string();
            assert!(
                m.contains("is empty: the passphrase is the file's first line"),
                "{m}"
            );
        }
    }

    #[test]
    fn key_files_are_refused_as_passphrase_files() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target.key");
        keygen_quiet(&target).unwrap();
        let site = dir.path().join("site.key");
        crate::sitekey::generate(&site, false).unwrap();
        for (p, says) in [
            (target.clone(), "target's SECRET identity"),
            (pub_path(&target), "target's public encryption key"),
            (site.clone(), "capture site's SECRET signing key"),
            (pub_path(&site), "capture site's public signing key"),
        ] {
            let e = read_passphrase(&p).unwrap_err();
            assert_eq!(crate::exit::code_of(&e), 2);
            let m = e.to_string();
            assert!(
                m.contains(says) && m.contains("not a passphrase file"),
                "{m}"
            );
        }
        // One line of a key file alone, or a public key behind a byte-order mark.
        let pub_text = fs::read_to_string(pub_path(&target)).unwrap();
        let site_pub = fs::read_to_string(pub_path(&site)).unwrap();
        let site_key = fs::read_to_string(&site).unwrap();
        let target_key = fs::read_to_string(&target).unwrap();
        for text in [
            target_key.lines().next().unwrap().to_string(),
            target_key.lines().nth(1).unwrap().to_string(),
            site_pub.lines().nth(1).unwrap().to_string(),
            site_key.lines().nth(1).unwrap().to_string(),
            format!("\u{feff}{pub_text}"),
        ] {
            let f = dir.path().join("line");
            fs::write(&f, format!("{text}\n")).unwrap();
            let e = read_passphrase(&f).unwrap_err();
            assert_eq!(crate::exit::code_of(&e), 2, "{text}");
        }
        // A passphrase that merely starts like a comment is still one.
        let f = dir.path().join("pw");
        fs::write(&f, "# my long passphrase words\n").unwrap();
        assert_eq!(
            read_passphrase(&f).unwrap().as_str(),
            "# my long passphrase words"
        );
    }

    #[test]
    fn work_factor_has_a_floor_outside_debug_builds() {
        assert_eq!(capture_work_factor(None).unwrap(), None);
        assert_eq!(capture_work_factor(Some(20)).unwrap(), Some(20));
        assert!(capture_work_factor(Some(0)).is_err());
        assert_eq!(
            capture_work_factor(Some(1)).is_err(),
            !cfg!(debug_assertions)
        );
    }

    #[test]
    fn other_keys_given_as_recipient_or_identity_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target.key");
        keygen_quiet(&target).unwrap();
        let site = dir.path().join("site.key");
        crate::sitekey::generate(&site, false).unwrap();
        let arg = target.to_str().unwrap();
        let m = read_recipients(arg).unwrap_err().to_string();
        assert!(m.contains("target's SECRET identity"), "{m}");
        assert!(m.contains("stays at the target"), "{m}");
        assert!(m.contains(&pub_path(&target).display().to_string()), "{m}");
        for p in [site.clone(), pub_path(&site)] {
            let e = read_recipients(p.to_str().unwrap()).unwrap_err();
            assert_eq!(crate::exit::code_of(&e), 2);
            let m = e.to_string();
            assert!(m.contains("capture site's"), "{m}");
            assert!(
                m.contains("--recipient takes the .pub written by `mgear keygen`"),
                "{m}"
            );
        }
        let Err(e) = read_identity(&pub_path(&target)) else {
            panic!("target.pub accepted as an identity")
        };
        let m = e.to_string();
        assert!(m.contains("--identity takes the secret half"), "{m}");
        // A key cache file, as a capture writes it.
        let cache = dir.path().join("web01-00.key");
        image_format::DataKey::from_bytes([7; 32])
            .save_cache_with_id(&cache, "web01", &[0; 16])
            .unwrap();
        let Err(e) = read_identity(&cache) else {
            panic!("a key cache accepted as an identity")
        };
        let m = e.to_string();
        assert_eq!(crate::exit::code_of(&e), 2);
        assert!(m.contains("is a data key cache of a capture host"), "{m}");
        assert!(!m.contains("0707"), "no key material in the message: {m}");
    }

    /// `keys list` skipped a key file it could not read without a word.
    #[test]
    fn a_key_file_that_cannot_be_read_is_named_not_skipped() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("web01-0011.key"), b"not a key\n").unwrap();
        // Cut short after its capture line: no key in it.
        std::fs::write(
            t.path().join("web01-0022.key"),
            b"# MotionGear data key cache\ncapture web01\nid 00ff",
        )
        .unwrap();
        std::fs::write(t.path().join("notes.txt"), b"not a key file either\n").unwrap();
        let keys = cached_keys(t.path()).unwrap();
        assert!(keys.is_empty());
        assert_eq!(
            unlisted_key_files(t.path(), &keys),
            vec![
                t.path().join("web01-0011.key"),
                t.path().join("web01-0022.key")
            ]
        );
        assert!(unlisted_key_files(&t.path().join("none"), &keys).is_empty());
        // A name that is not UTF-8 is JSON text all the same (`keys list --json` panicked).
        use std::os::unix::ffi::OsStrExt as _;
        let k = CachedKey {
            path: t
                .path()
                .join(std::ffi::OsStr::from_bytes(b"bad\xffname.key")),
            name: "web01".into(),
            capture_id: None,
            modified_unix: None,
            modified: None,
        };
        let v = serde_json::to_value(&k).unwrap();
        assert!(
            v["path"].as_str().unwrap().ends_with("bad\u{fffd}name.key"),
            "{v}"
        );
    }

    #[test]
    fn a_recipients_file_gives_every_key_it_lists_once() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (
            age::x25519::Identity::generate().to_public().to_string(),
            age::x25519::Identity::generate().to_public().to_string(),
        );
        let p = dir.path().join("two.pub");
        fs::write(&p, format!("# the target\n{a}\n\n  {b}  \n{a}\n")).unwrap();
        let got: Vec<String> = read_recipients(p.to_str().unwrap())
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(got, [a.clone(), b]);
        // A line that is not a key is named, and nothing is taken.
        fs::write(&p, format!("{a}\nssh-ed25519 AAAA\n")).unwrap();
        let e = read_recipients(p.to_str().unwrap()).unwrap_err();
        assert_eq!(crate::exit::code_of(&e), 2);
        assert!(
            e.to_string().contains("(line 2) is not an age public key"),
            "{e}"
        );
        // The key itself on the command line.
        assert_eq!(read_recipients(&a).unwrap().len(), 1);
    }

    #[test]
    fn bad_key_files_are_usage_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("junk");
        fs::write(&p, "hello\n").unwrap();
        let Err(e) = read_identity(&p) else {
            panic!("junk accepted as an identity")
        };
        assert_eq!(crate::exit::code_of(&e), 2);
        assert_eq!(
            crate::exit::code_of(&read_recipients(p.to_str().unwrap()).unwrap_err()),
            2
        );
    }
}
