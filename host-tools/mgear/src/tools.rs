//! External tools (`qemu-img`, `dd`, ...): finding them and running them with
//! errors that say which Debian package to install.

use std::path::PathBuf;
use std::process::Command;

use crate::error::Context;

/// The full path of `tool` on `PATH`, if any.
pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// Fail unless `tool` is installed, naming the Debian package that has it.
pub fn require(tool: &str, package: &str) -> crate::Result<PathBuf> {
    which(tool).ok_or_else(|| {
        crate::exit::usage(format!(
            "{tool} is not installed: install it with `apt-get install {package}`"
        ))
    })
}

/// Run a command; a non-zero exit is an error carrying its stderr.
pub fn run(cmd: &mut Command) -> crate::Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !out.status.success() {
        crate::bail!(
            "{:?} failed ({}): {}",
            cmd.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
