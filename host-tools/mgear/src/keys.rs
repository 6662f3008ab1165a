//! Key files: `mgear keygen`, and reading identities, recipients and passphrases.
//!
//! The target datacenter runs `mgear keygen --out target.key` once. It writes
//! `target.key` (mode 0600, the age X25519 identity `AGE-SECRET-KEY-1...`, in
//! the same layout as `age-keygen` so the `age` CLI reads it too) and
//! `target.pub` (the recipient `age1...`), which is all the capture site needs.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use age::secrecy::ExposeSecret;
use anyhow::Context;
use zeroize::Zeroizing;

use crate::exit::usage;

/// Arguments of `mgear keygen`.
#[derive(clap::Args, Debug)]
pub struct KeygenArgs {
    /// Where to write the secret identity (0600); the public key goes next to it with `.pub`.
    #[arg(long)]
    pub out: PathBuf,
    /// Overwrite existing key files.
    #[arg(long)]
    pub force: bool,
    /// Make a capture site's Ed25519 signing key instead (KEY: PKCS#8 PEM, 0600;
    /// KEY.pub: give it to the target, which pins it with `--trust`).
    #[arg(long)]
    pub signing: bool,
}

/// The `.pub` path next to a key file: `target.key` -> `target.pub`.
pub fn pub_path(key: &Path) -> PathBuf {
    key.with_extension("pub")
}

/// Write `contents` to `path` with mode `mode`, refusing to overwrite unless `force`.
pub fn write_new(path: &Path, contents: &[u8], mode: u32, force: bool) -> anyhow::Result<()> {
    if !force && path.exists() {
        return Err(usage(format!(
            "{} already exists: refusing to overwrite a key (use --force if you really mean it)",
            path.display()
        )));
    }
    if force {
        let _ = fs::remove_file(path);
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(contents)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// `mgear keygen`.
pub fn keygen(args: KeygenArgs) -> anyhow::Result<i32> {
    if args.signing {
        let public = crate::sitekey::generate(&args.out, args.force)?;
        println!(
            "signing key: {} (keep it at the capture site; `mgear capture --sign`)",
            args.out.display()
        );
        println!(
            "public key:  {} -> give this to the target datacenter (`--trust`)",
            pub_path(&args.out).display()
        );
        println!(
            "fingerprint: {}",
            crate::sitekey::fingerprint(&public.to_bytes())
        );
        return Ok(crate::exit::OK);
    }
    let recipient = write_key_pair(&args.out, args.force)?;
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
pub fn keygen_quiet(out: &Path) -> anyhow::Result<()> {
    write_key_pair(out, false).map(|_| ())
}

/// Write `out` and `out.pub`; returns the recipient.
fn write_key_pair(out: &Path, force: bool) -> anyhow::Result<String> {
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public().to_string();
    let secret = Zeroizing::new(format!(
        "# created by mgear keygen\n# public key: {recipient}\n{}\n",
        identity.to_string().expose_secret()
    ));
    let pub_file = pub_path(out);
    if pub_file == out {
        return Err(usage(
            "--out must not end in .pub (the public key is written there)",
        ));
    }
    write_new(out, secret.as_bytes(), 0o600, force)?;
    write_new(&pub_file, format!("{recipient}\n").as_bytes(), 0o644, force)?;
    Ok(recipient)
}

/// The first non-comment, non-empty line of a key file.
fn key_line(text: &str) -> Option<&str> {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
}

/// Read an age X25519 identity file.
pub fn read_identity(path: &Path) -> anyhow::Result<age::x25519::Identity> {
    let text = Zeroizing::new(
        fs::read_to_string(path)
            .map_err(|e| usage(format!("cannot read identity {}: {e}", path.display())))?,
    );
    let line = key_line(&text).ok_or_else(|| {
        usage(format!(
            "{} holds no key: expected AGE-SECRET-KEY-1...",
            path.display()
        ))
    })?;
    age::x25519::Identity::from_str(line).map_err(|e| {
        usage(format!(
            "{} is not an age identity ({e}): give the .key file written by `mgear keygen`",
            path.display()
        ))
    })
}

/// Read a recipient: a file holding `age1...`, or the `age1...` string itself.
pub fn read_recipient(arg: &str) -> anyhow::Result<age::x25519::Recipient> {
    let text = if arg.starts_with("age1") {
        arg.to_owned()
    } else {
        fs::read_to_string(arg).map_err(|e| usage(format!("cannot read recipient {arg}: {e}")))?
    };
    let line = key_line(&text)
        .ok_or_else(|| usage(format!("{arg} holds no public key: expected age1...")))?;
    age::x25519::Recipient::from_str(line).map_err(|e| {
        usage(format!(
            "{arg} is not an age public key ({e}): give the .pub file written by `mgear keygen`"
        ))
    })
}

/// Read a passphrase file (first line, without the newline).
pub fn read_passphrase(path: &Path) -> anyhow::Result<Zeroizing<String>> {
    let text = Zeroizing::new(fs::read_to_string(path).map_err(|e| {
        usage(format!(
            "cannot read passphrase file {}: {e}",
            path.display()
        ))
    })?);
    let line = text.lines().next().unwrap_or("").to_owned();
    if line.is_empty() {
        return Err(usage(format!(
            "passphrase file {} is empty",
            path.display()
        )));
    }
    Ok(Zeroizing::new(line))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn keygen_writes_a_usable_pair() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("t.key");
        keygen(KeygenArgs {
            out: key.clone(),
            force: false,
            signing: false,
        })
        .unwrap();
        let mode = fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let id = read_identity(&key).unwrap();
        let rcpt = read_recipient(pub_path(&key).to_str().unwrap()).unwrap();
        assert_eq!(id.to_public().to_string(), rcpt.to_string());
        // A second keygen without --force must not clobber the key.
        let err = keygen(KeygenArgs {
            out: key.clone(),
            force: false,
            signing: false,
        })
        .unwrap_err();
        assert_eq!(crate::exit::code_of(&err), crate::exit::USAGE);
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
            crate::exit::code_of(&read_recipient(p.to_str().unwrap()).unwrap_err()),
            2
        );
    }
}
