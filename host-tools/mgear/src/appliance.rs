//! `mgear appliance ...`: talk to the appliance over its console (placeholder until the firmware work lands).
#![allow(dead_code)]

/// Arguments of `mgear appliance`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Run `mgear appliance`; returns the process exit code.
pub fn run(_args: Args) -> anyhow::Result<i32> {
    anyhow::bail!("not implemented yet")
}
