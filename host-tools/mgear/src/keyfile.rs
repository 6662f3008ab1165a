//! Writing key files, for every kind of key `mgear keygen` makes (the
//! target's age identity in `crate::keys`, a capture site's signing key in
//! `crate::sitekey`): never over an existing key unless forced, the secret
//! half private from its first byte, the public half beside it as `.pub`.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::error::Context;

use crate::exit::usage;

/// Open `path` for reading without waiting for a writer: a FIFO nobody writes to (`mkfifo`)
/// blocked open(2) forever, and a first SIGTERM did not end it; opened so, it reads as empty
/// (and is refused as such), while a pipe something writes to (`--pin-file <(pass show
/// pin)`) reads as ever.
///
/// A directory is refused by name: it opens, and its read said only "Is a directory (os
/// error 21)" (after a warning about its mode, as if it were a file others can read).
pub fn open_read(path: &Path) -> std::io::Result<fs::File> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)?;
    if f.metadata()?.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::IsADirectory,
            "it is a directory, not a file",
        ));
    }
    // Reads block again as they would have: only the open was not to wait.
    let flags =
        nix::fcntl::fcntl(&f, nix::fcntl::FcntlArg::F_GETFL).map_err(std::io::Error::from)?;
    let mut flags = nix::fcntl::OFlag::from_bits_truncate(flags);
    flags.remove(nix::fcntl::OFlag::O_NONBLOCK);
    nix::fcntl::fcntl(&f, nix::fcntl::FcntlArg::F_SETFL(flags)).map_err(std::io::Error::from)?;
    Ok(f)
}

/// How a key or passphrase file argument is named in a message: as given, unless no such file
/// exists and it may be the secret itself typed in the file's place (a secret key, or any
/// passphrase file argument): the error, `--json` and a ticket report (mode 0644) repeated it.
pub fn named(path: &Path, passphrase: bool) -> String {
    let text = path.to_string_lossy();
    let secret = text.starts_with("AGE-SECRET-KEY-") || text.contains("PRIVATE KEY");
    if (secret || passphrase) && std::fs::symlink_metadata(path).is_err() {
        return match secret {
            true => "given (a secret key itself, not a file: not repeated here; it is in the \
                     shell's history now, so treat that key as exposed, and give the path of \
                     its file instead)"
                .into(),
            false => "given (not repeated here: there is no such file, and the argument may \
                      be the passphrase itself; give the path of a file whose first line is \
                      the passphrase)"
                .into(),
        };
    }
    path.display().to_string()
}

/// [`image_format::private::create_dir`] of `dir`, the `what` (e.g. "key cache"): a refusal
/// of the directory as it is (a symlink, another user's, one others may write to) is the
/// operator's to settle (exit 2, its message says how), not an unreachable path (exit 3,
/// "reconnect it").
pub fn private_dir(dir: &Path, what: &str) -> crate::Result<()> {
    image_format::private::create_dir(dir).map_err(|e| match e.raw_os_error() {
        None => usage(format!("{what} {}: {e}", dir.display())),
        Some(_) => crate::Error::from(e).context(format!("creating {what} {}", dir.display())),
    })
}

/// The most a key file may hold: a key is a line of under a hundred bytes, an identity file
/// of thousands of keys fits. `--identity /dev/zero` (or a disk image given by mistake) was
/// read whole, until the kernel killed the process.
pub const KEY_FILE_LIMIT: u64 = 1 << 20;

/// [`std::fs::read`] through [`open_read`], of a key file: refused past [`KEY_FILE_LIMIT`].
pub fn read(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut out = Vec::new();
    open_read(path)?
        .take(KEY_FILE_LIMIT + 1)
        .read_to_end(&mut out)?;
    if out.len() as u64 > KEY_FILE_LIMIT {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "it holds more than {} bytes, and no key file does (a key is one short line): \
                 check that the path names the key file",
                KEY_FILE_LIMIT
            ),
        ));
    }
    Ok(out)
}

/// [`std::fs::read_to_string`] through [`open_read`].
pub fn read_to_string(path: &Path) -> std::io::Result<String> {
    String::from_utf8(read(path)?)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// The start of a secret file whose first line is the secret (a PIN or passphrase file),
/// at most `limit` bytes of it: a secret is a line, and `/dev/zero` is no file of one.
pub fn read_head(path: &Path, limit: u64) -> Result<zeroize::Zeroizing<Vec<u8>>, Head> {
    use std::io::Read as _;
    let mut raw = zeroize::Zeroizing::new(Vec::new());
    open_read(path)
        .and_then(|f| f.take(limit).read_to_end(&mut raw))
        .map_err(Head::Unreadable)?;
    if raw.len() as u64 == limit && !raw.contains(&b'\n') {
        return Err(Head::TooLong(limit));
    }
    Ok(raw)
}

/// Why [`read_head`] gave nothing.
#[derive(Debug)]
pub enum Head {
    Unreadable(std::io::Error),
    /// The first line runs past the limit (in bytes).
    TooLong(u64),
}

impl std::fmt::Display for Head {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Head::Unreadable(e) => write!(f, "{e}"),
            Head::TooLong(limit) => write!(f, "its first line is longer than {limit} bytes"),
        }
    }
}

/// The `.pub` path next to a key file: `target.key` -> `target.pub`.
pub fn pub_path(key: &Path) -> PathBuf {
    key.with_extension("pub")
}

/// Write a key pair: the secret half to `key` (0600) and the public half to
/// its `.pub`. Both are checked before either is written, and a secret whose
/// public half could not be written is removed: a new secret never sits
/// beside an old, unrelated `.pub` (which a capture site would then use).
/// `signing`: a site's signing key (its replacement breaks pins, not decryption).
pub fn write_pair(
    key: &Path,
    secret: &[u8],
    public: &[u8],
    force: bool,
    signing: bool,
) -> crate::Result<()> {
    let public_path = pub_path(key);
    // --force replaces key files, never a directory (it failed with "File exists").
    if let Some(d) = [key, public_path.as_path()]
        .into_iter()
        .find(|p| p.is_dir())
    {
        return Err(usage(format!(
            "{} is a directory: --out takes the path of the key file to write, e.g. {}; \
             nothing was written",
            d.display(),
            key.join("target.key").display()
        )));
    }
    if public_path == key {
        return Err(usage(
            "--out must not end in .pub (the public key is written there)",
        ));
    }
    // One keygen at a time in the directory: two `--force` runs at once each moved the
    // other's new key aside or removed it, and left no secret, or one that does not match
    // the .pub, exit 0. Waits for the other (a key is made in a moment).
    let dir = match key.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // (A directory that cannot be opened fails the write below, with its own words.)
    let _one_at_a_time = fs::File::open(&dir)
        .ok()
        .and_then(|d| nix::fcntl::Flock::lock(d, nix::fcntl::FlockArg::LockExclusive).ok());
    // A link (a dangling one too, which `exists` calls absent): no key is written through
    // one, and its refusal read "File exists (os error 17)", exit 3.
    if let Some(l) = [key, public_path.as_path()]
        .into_iter()
        .find(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink()))
    {
        return Err(usage(format!(
            "{} is a symbolic link{}: a key is never written through one (it could point \
             where others read); remove the link or give --out another path; nothing was \
             written",
            l.display(),
            std::fs::read_link(l)
                .map(|t| format!(" (to {})", t.display()))
                .unwrap_or_default()
        )));
    }
    if !force {
        if let Some(p) = [key, public_path.as_path()]
            .into_iter()
            .find(|p| p.exists())
        {
            return Err(usage(format!(
                "{} already exists: refusing to overwrite a key (what was encrypted to it can \
                 only ever be opened with it, what was signed with it is pinned by it): give \
                 --out another name, or --force for a key nothing uses; nothing was written",
                p.display()
            )));
        }
    } else if key.exists() {
        // Never over an earlier replaced key.
        let kept = (1..)
            .map(|n| {
                let mut k = key.as_os_str().to_owned();
                k.push(if n == 1 {
                    ".replaced".to_string()
                } else {
                    format!(".replaced.{n}")
                });
                PathBuf::from(k)
            })
            .find(|k| !k.exists())
            .unwrap_or_else(|| key.with_extension("replaced"));
        // A signing key encrypts nothing: "captures ... can no longer be opened" alarmed an
        // operator replacing a site key.
        let lost = if signing {
            "captures it signs from now on are refused by targets that pinned the old public \
             key until they pin the new one"
        } else {
            "captures encrypted to its public key can no longer be opened with the new one"
        };
        eprintln!(
            "mgear keygen: warning: replacing {}: {lost}; the old key is kept as {} until you \
             remove it",
            key.display(),
            kept.display()
        );
        fs::rename(key, &kept)
            .with_context(|| format!("keeping the old key as {}", kept.display()))?;
        // A secret kept aside is the owner's alone, whatever mode it had.
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&kept, fs::Permissions::from_mode(0o600))
                .with_context(|| format!("making {} private", kept.display()))?;
        }
    }
    write_new(key, secret, 0o600, force)?;
    if let Err(e) = write_new(&public_path, public, 0o644, force) {
        let _ = fs::remove_file(key);
        return Err(e);
    }
    Ok(())
}

/// A warning on stderr when the secret key file at `path` can be read by others than its
/// owner (keygen writes 0600; a copied key went unremarked at 0644).
pub fn warn_if_exposed(path: &Path) {
    warn_if_exposed_as(path, "secret key");
}

/// [`warn_if_exposed`] of a secret that is `what` (a "passphrase file": it opens a capture on
/// its own, and was read at any mode without a word).
pub fn warn_if_exposed_as(path: &Path, what: &str) {
    // Once per file and run: a command reads its key more than once.
    static WARNED: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
    if let Some(mode) = exposed_mode(path) {
        let mut warned = WARNED.lock().unwrap_or_else(|e| e.into_inner());
        if warned.iter().any(|p| p == path) {
            return;
        }
        warned.push(path.to_path_buf());
        let w = format!(
            "the {what} {} can be read by other users of this host (mode {:o}): `chmod 600 \
             {}`",
            path.display(),
            mode & 0o777,
            crate::output::sh(path.to_string_lossy())
        );
        eprintln!("mgear: warning: {w}");
        crate::output::side_warning(&w);
    }
}

/// The mode of the secret file at `path` when others than its owner can read it. Only of a
/// regular file: a directory's mode was warned of before its read failed "Is a directory",
/// and a pipe's (`--pin-file <(pass show pin)`) says nothing of who reads the secret.
pub(crate) fn exposed_mode(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let meta = fs::metadata(path).ok()?;
    let mode = meta.permissions().mode();
    (meta.is_file() && mode & 0o077 != 0).then_some(mode)
}

/// Write `contents` to `path` with mode `mode`, refusing to overwrite unless `force`.
pub fn write_new(path: &Path, contents: &[u8], mode: u32, force: bool) -> crate::Result<()> {
    if !force && path.exists() {
        return Err(usage(format!(
            "{} already exists: refusing to overwrite a key (use --force if you really mean it)",
            path.display()
        )));
    }
    if force {
        let _ = fs::remove_file(path);
    }
    let created = if mode == image_format::private::FILE_MODE {
        image_format::private::create(path)
    } else {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
    };
    let mut f = created.with_context(|| format!("creating {}", path.display()))?;
    f.write_all(contents)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// The kinds of key file `mgear keygen` writes, told apart by their text
/// before any parser sees them: a parser only says what it expected (a PEM
/// decoder given `age1...` complains of a "NUL byte"), while a user who gave
/// the wrong one of four files needs to hear which one it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// The target's public key, `age1...` (`target.pub`, `mgear keygen`).
    TargetPublic,
    /// The target's secret identity, `AGE-SECRET-KEY-1...` (`target.key`).
    TargetSecret,
    /// A capture site's public key, `-----BEGIN PUBLIC KEY-----` (`site.pub`,
    /// `mgear keygen --signing`).
    SitePublic,
    /// A capture site's secret signing key, `-----BEGIN PRIVATE KEY-----` (`site.key`).
    SiteSecret,
    /// None of the above.
    Unknown,
}

impl KeyKind {
    /// Which kind of key `text` holds. The secret forms are looked for first:
    /// `target.key` also carries its public key in a `# public key:` comment.
    pub fn of(text: &str) -> KeyKind {
        if text.contains("AGE-SECRET-KEY-1") {
            return KeyKind::TargetSecret;
        }
        if text.contains("-----BEGIN PRIVATE KEY-----") {
            return KeyKind::SiteSecret;
        }
        if text.contains("-----BEGIN PUBLIC KEY-----") {
            return KeyKind::SitePublic;
        }
        let first = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'));
        // Bech32 may be written in upper case.
        if first.is_some_and(|l| l.to_ascii_lowercase().starts_with("age1")) {
            return KeyKind::TargetPublic;
        }
        KeyKind::Unknown
    }

    /// What this kind is, for a message.
    pub fn what(self) -> &'static str {
        match self {
            KeyKind::TargetPublic => {
                "the target's public encryption key (age1..., the .pub written by `mgear keygen`)"
            }
            KeyKind::TargetSecret => {
                "the target's SECRET identity (AGE-SECRET-KEY-1..., the .key written by \
                 `mgear keygen`)"
            }
            KeyKind::SitePublic => {
                "a capture site's public signing key (-----BEGIN PUBLIC KEY-----, the .pub \
                 written by `mgear keygen --signing`)"
            }
            KeyKind::SiteSecret => {
                "a capture site's SECRET signing key (-----BEGIN PRIVATE KEY-----, the .key \
                 written by `mgear keygen --signing`)"
            }
            KeyKind::Unknown => "not a key mgear writes",
        }
    }

    /// The file of this kind, for advice.
    fn file(self) -> &'static str {
        match self {
            KeyKind::TargetPublic => "the .pub written by `mgear keygen` (e.g. target.pub)",
            KeyKind::TargetSecret => "the .key written by `mgear keygen` (e.g. target.key)",
            KeyKind::SitePublic => "the .pub written by `mgear keygen --signing` (e.g. site.pub)",
            KeyKind::SiteSecret => "the .key written by `mgear keygen --signing` (e.g. site.key)",
            KeyKind::Unknown => "a key file",
        }
    }

    fn is_site(self) -> bool {
        matches!(self, KeyKind::SitePublic | KeyKind::SiteSecret)
    }

    fn is_secret(self) -> bool {
        matches!(self, KeyKind::TargetSecret | KeyKind::SiteSecret)
    }
}

/// If `text` (read from `arg`, given as `flag`) is a key of a known kind other
/// than `wanted`, the usage error that says which it is and which file
/// belongs there instead; `None` when it is of the wanted kind or of no kind
/// we know (the caller's parser then says what is wrong).
pub fn misplaced(arg: &str, text: &str, flag: &str, wanted: KeyKind) -> Option<crate::Error> {
    let found = KeyKind::of(text);
    if found == wanted || found == KeyKind::Unknown {
        return None;
    }
    let advice = if found.is_site() == wanted.is_site() && found.is_secret() && !wanted.is_secret()
    {
        // The secret half of the right pair: name its public half beside it.
        let holder = if found.is_site() {
            "the capture site"
        } else {
            "the target"
        };
        // `keygen` wrote the public half beside the secret one; a file named otherwise (a
        // recipients list holding a secret key) has no such neighbour to name.
        let beside = pub_path(Path::new(arg));
        if beside.is_file() {
            format!(
                "it stays at {holder} and is never copied; give its public half, {}",
                beside.display()
            )
        } else {
            format!(
                "it stays at {holder} and is never copied; give its public half (the .pub \
                 file `mgear keygen` wrote beside it)"
            )
        }
    } else if found.is_site() == wanted.is_site() {
        // The public half of the right pair: the secret one is beside it.
        format!(
            "{flag} takes the secret half of the pair: {}",
            wanted.file()
        )
    } else {
        format!("{flag} takes {}", wanted.file())
    };
    Some(usage(format!("{arg} is {}: {advice}", found.what())))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key is never written through a link, a dangling one included: refused by name, exit 2
    /// (it said "File exists (os error 17)", exit 3).
    #[test]
    fn a_key_is_not_written_through_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("dl.key");
        std::os::unix::fs::symlink(dir.path().join("nowhere.key"), &link).unwrap();
        for force in [false, true] {
            let e = write_pair(&link, b"secret", b"public", force, false).unwrap_err();
            assert_eq!(crate::exit::code_of(&e), crate::exit::USAGE);
            assert!(e.to_string().contains("is a symbolic link"), "{e}");
        }
        assert!(!dir.path().join("nowhere.key").exists());
    }

    /// A key cache refused as it is (a symlink, others may write to it) is the operator's to
    /// settle: exit 2 naming it (it was exit 3 with "reconnect it").
    #[test]
    fn a_refused_private_dir_is_a_usage_error() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        fs::create_dir(&real).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let e = private_dir(&link, "key cache").unwrap_err();
        assert_eq!(crate::exit::code_of(&e), crate::exit::USAGE);
        assert!(e.to_string().starts_with("key cache "), "{e}");
        fs::set_permissions(&real, fs::Permissions::from_mode(0o777)).unwrap();
        let e = private_dir(&real, "key cache").unwrap_err();
        assert_eq!(crate::exit::code_of(&e), crate::exit::USAGE, "{e}");
        fs::set_permissions(&real, fs::Permissions::from_mode(0o700)).unwrap();
        private_dir(&real, "key cache").unwrap();
    }

    /// A secret typed where its file's path belongs is not repeated (the error, --json and a
    /// ticket report carried it); a path that is a file, or any path of a key, is named.
    #[test]
    fn a_secret_given_for_its_file_is_not_repeated() {
        let key = "AGE-SECRET-KEY-1Q5K72K8A9J6ESCFNHEJED8J6YDJQ794XWHEGSUJYCG4LCE245N2SQFGAEF";
        assert!(!named(Path::new(key), false).contains(key));
        assert!(!named(Path::new("correct horse battery"), true).contains("horse"));
        assert_eq!(
            named(Path::new("/no/such/target.key"), false),
            "/no/such/target.key"
        );
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        fs::write(&pw, "x\n").unwrap();
        assert_eq!(named(&pw, true), pw.display().to_string());
    }

    /// A device or a large file given as a key file: refused after the limit, not read whole
    /// (`--identity /dev/zero` ran until the kernel killed the process).
    #[test]
    fn a_key_file_is_read_up_to_its_limit_only() {
        let e = read(Path::new("/dev/zero")).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("no key file does"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.key");
        fs::File::create(&big)
            .unwrap()
            .set_len(KEY_FILE_LIMIT + 1)
            .unwrap();
        assert!(read(&big).is_err());
        fs::File::create(&big)
            .unwrap()
            .set_len(KEY_FILE_LIMIT)
            .unwrap();
        assert_eq!(read(&big).unwrap().len() as u64, KEY_FILE_LIMIT);
    }

    /// A directory given for a secret file: named as one, and its mode (0755) not warned of
    /// as a secret's others can read.
    #[test]
    fn a_directory_is_no_secret_file_and_its_mode_no_warning() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(exposed_mode(dir.path()), None);
        let e = open_read(dir.path()).unwrap_err();
        assert_eq!(e.to_string(), "it is a directory, not a file");
        assert!(matches!(
            read_head(dir.path(), 64),
            Err(Head::Unreadable(_))
        ));
        let file = dir.path().join("pin");
        fs::write(&file, "314159\n").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(exposed_mode(&file).map(|m| m & 0o777), Some(0o644));
    }

    #[test]
    fn a_directory_is_no_key_file_with_or_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("keys");
        fs::create_dir(&d).unwrap();
        for force in [false, true] {
            let e = write_pair(&d, b"s", b"p", force, false).unwrap_err();
            assert_eq!(crate::exit::code_of(&e), crate::exit::USAGE);
            assert!(
                e.to_string().contains("keys is a directory: --out takes"),
                "{e}"
            );
        }
        assert!(d.is_dir() && fs::read_dir(&d).unwrap().next().is_none());
        // `--out .` has no file name to put `.pub` on: it is named a directory too (it was
        // refused as "must not end in .pub").
        let e = write_pair(Path::new("."), b"s", b"p", false, false).unwrap_err();
        assert!(
            e.to_string().contains(". is a directory: --out takes"),
            "{e}"
        );
    }

    #[test]
    fn key_kinds_are_told_apart_and_misplaced_ones_named() {
        let target_pub = "age1d8c4a8lmlm7zwm8rgmjwyrzrp670qvqffcfhnsneujz9zezlmscqtys85h\n";
        let target_key = "# created by mgear keygen\n# public key: age1d8c4\nAGE-SECRET-KEY-1QQQ\n";
        let site_pub = "-----BEGIN PUBLIC KEY-----\nMCow\n-----END PUBLIC KEY-----\n";
        let site_key = "-----BEGIN PRIVATE KEY-----\nMC4C\n-----END PRIVATE KEY-----\n";
        assert_eq!(KeyKind::of(target_pub), KeyKind::TargetPublic);
        assert_eq!(KeyKind::of(target_key), KeyKind::TargetSecret);
        assert_eq!(KeyKind::of(site_pub), KeyKind::SitePublic);
        assert_eq!(KeyKind::of(site_key), KeyKind::SiteSecret);
        assert_eq!(KeyKind::of("garbage\n"), KeyKind::Unknown);
        assert_eq!(KeyKind::of(""), KeyKind::Unknown);
        assert!(misplaced("t.pub", target_pub, "--recipient", KeyKind::TargetPublic).is_none());
        assert!(misplaced("g", "garbage", "--recipient", KeyKind::TargetPublic).is_none());
        // The secret half where its public half belongs: kept at home, its .pub named when
        // there is one beside it (a recipients list holding a secret key has none).
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("target.key");
        let arg = key.display().to_string();
        let e = misplaced(&arg, target_key, "--recipient", KeyKind::TargetPublic).unwrap();
        assert_eq!(crate::exit::code_of(&e), crate::exit::USAGE);
        let m = e.to_string();
        assert!(m.contains("target's SECRET identity"), "{m}");
        assert!(m.contains("stays at the target"), "{m}");
        assert!(
            m.contains("the .pub file `mgear keygen` wrote beside it"),
            "{m}"
        );
        fs::write(dir.path().join("target.pub"), target_pub).unwrap();
        let m = misplaced(&arg, target_key, "--recipient", KeyKind::TargetPublic)
            .unwrap()
            .to_string();
        assert!(
            m.contains(&format!(
                "give its public half, {}",
                dir.path().join("target.pub").display()
            )),
            "{m}"
        );
        // The public half where the secret one belongs.
        let m = misplaced("site.pub", site_pub, "--sign", KeyKind::SiteSecret)
            .unwrap()
            .to_string();
        assert!(m.contains("capture site's public signing key"), "{m}");
        assert!(m.contains("--sign takes the secret half"), "{m}");
        assert!(m.contains("site.key"), "{m}");
        // A key of the other pair.
        let m = misplaced("site.key", site_key, "--recipient", KeyKind::TargetPublic)
            .unwrap()
            .to_string();
        assert!(m.contains("capture site's SECRET signing key"), "{m}");
        assert!(
            m.contains("--recipient takes the .pub written by `mgear keygen`"),
            "{m}"
        );
    }

    #[test]
    fn a_pair_is_written_whole_or_not_at_all() {
        let d = tempfile::tempdir().unwrap();
        let key = d.path().join("target.key");
        // A stale .pub: refused, and no new secret is left beside it.
        fs::write(pub_path(&key), b"old public\n").unwrap();
        let e = write_pair(&key, b"secret", b"public", false, false).unwrap_err();
        assert!(e.to_string().contains("target.pub already exists"), "{e}");
        assert!(!key.exists(), "a secret was written beside a stale .pub");
        assert_eq!(fs::read(pub_path(&key)).unwrap(), b"old public\n");
        // A stale secret: refused, the .pub untouched.
        fs::remove_file(pub_path(&key)).unwrap();
        fs::write(&key, b"old secret").unwrap();
        assert!(write_pair(&key, b"secret", b"public", false, false).is_err());
        assert!(!pub_path(&key).exists());
        // Forced: both replaced, the old secret kept aside (`--force` over the key every
        // shipment was encrypted to lost them all, without a word).
        write_pair(&key, b"secret", b"public", true, false).unwrap();
        assert_eq!(fs::read(&key).unwrap(), b"secret");
        assert_eq!(fs::read(pub_path(&key)).unwrap(), b"public");
        assert_eq!(
            fs::read(d.path().join("target.key.replaced")).unwrap(),
            b"old secret"
        );
        // ... never over a key kept aside before.
        write_pair(&key, b"third", b"public3", true, false).unwrap();
        assert_eq!(
            fs::read(d.path().join("target.key.replaced")).unwrap(),
            b"old secret"
        );
        assert_eq!(
            fs::read(d.path().join("target.key.replaced.2")).unwrap(),
            b"secret"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(d.path().join("target.key.replaced.2"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");
        // The first was written 0644 by hand: kept aside, it is the owner's alone.
        let mode = fs::metadata(d.path().join("target.key.replaced"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");
    }
}
