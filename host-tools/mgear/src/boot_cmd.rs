//! `mgear boot ...`: boot a volume and prove it came up (placeholder until the boot work lands).
#![allow(dead_code)]

/// Arguments of `mgear boot`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Run `mgear boot`; returns the process exit code.
pub fn run(_args: Args) -> anyhow::Result<i32> {
    anyhow::bail!("not implemented yet")
}
