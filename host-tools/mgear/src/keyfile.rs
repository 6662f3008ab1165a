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
