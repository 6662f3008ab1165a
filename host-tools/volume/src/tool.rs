//! Running external tools (qemu-img, qemu-nbd, virsh) with errors that
//! name the Debian package to install.

use std::path::PathBuf;
use std::process::Command;

use crate::{Error, Result};

/// The full path of `tool` on `PATH`, or an error naming its package.
pub(crate) fn require(tool: &str, package: &str) -> Result<PathBuf> {
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join(tool))
                .find(|p| p.is_file())
        })
        .ok_or_else(|| {
            Error::Usage(format!(
                "{tool} is not installed: install it with `apt-get install {package}`"
            ))
        })
}

/// Run `cmd`; its stdout, or an error carrying its stderr.
pub(crate) fn run(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .output()
        .map_err(|e| Error::io(format!("running {what}"), e))?;
    if !out.status.success() {
        return Err(Error::Tool(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
