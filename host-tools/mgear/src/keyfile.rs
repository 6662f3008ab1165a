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

/// The `.pub` path next to a key file: `target.key` -> `target.pub`.
pub fn pub_path(key: &Path) -> PathBuf {
    key.with_extension("pub")
}

/// Write a key pair: the secret half to `key` (0600) and the public half to
/// its `.pub`. Both are checked before either is written, and a secret whose
/// public half could not be written is removed: a new secret never sits
/// beside an old, unrelated `.pub` (which a capture site would then use).
pub fn write_pair(key: &Path, secret: &[u8], public: &[u8], force: bool) -> crate::Result<()> {
    let public_path = pub_path(key);
    if !force {
        if let Some(p) = [key, public_path.as_path()]
            .into_iter()
            .find(|p| p.exists())
        {
            return Err(usage(format!(
                "{} already exists: refusing to overwrite a key (use --force if you really \
                 mean it); nothing was written",
                p.display()
            )));
        }
    }
    write_new(key, secret, 0o600, force)?;
    if let Err(e) = write_new(&public_path, public, 0o644, force) {
        let _ = fs::remove_file(key);
        return Err(e);
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pair_is_written_whole_or_not_at_all() {
        let d = tempfile::tempdir().unwrap();
        let key = d.path().join("target.key");
        // A stale .pub: refused, and no new secret is left beside it.
        fs::write(pub_path(&key), b"old public\n").unwrap();
        let e = write_pair(&key, b"secret", b"public", false).unwrap_err();
        assert!(e.to_string().contains("target.pub already exists"), "{e}");
        assert!(!key.exists(), "a secret was written beside a stale .pub");
        assert_eq!(fs::read(pub_path(&key)).unwrap(), b"old public\n");
        // A stale secret: refused, the .pub untouched.
        fs::remove_file(pub_path(&key)).unwrap();
        fs::write(&key, b"old secret").unwrap();
        assert!(write_pair(&key, b"secret", b"public", false).is_err());
        assert!(!pub_path(&key).exists());
        // Forced: both replaced.
        write_pair(&key, b"secret", b"public", true).unwrap();
        assert_eq!(fs::read(&key).unwrap(), b"secret");
        assert_eq!(fs::read(pub_path(&key)).unwrap(), b"public");
    }
}
