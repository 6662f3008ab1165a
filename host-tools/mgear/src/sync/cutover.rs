//! `mgear cutover`: the only step that needs downtime.
//!
//! 1. a warm sync while the source still runs (skipped with `--no-presync`),
//!    so the quiesced sync has little left to send;
//! 2. `--quiesce CMD` (downtime starts when it is launched);
//! 3. the final sync, which must verify;
//! 4. boot `--boot-target` under local QEMU (`-accel tcg -nic none`, via
//!    `mgear_boot`) until `--wait-for` appears on its console; downtime ends
//!    at that proof of boot.
//!
//! If anything fails after quiescing, `--resume CMD` runs so the source
//! serves again; the target volume is left as the last sync wrote it.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::error::Context;
use mgear_boot::{BootSpec, Target};
use serde::Serialize;

use super::{print_summary, run_sync, Cutover, SyncReport};
use crate::exit::{coded, usage, FOUND, OK, USAGE};

/// What `cutover --json` prints.
#[derive(Debug, Serialize)]
pub struct CutoverReport {
    pub command: &'static str,
    pub name: String,
    pub presync: Option<SyncReport>,
    pub final_sync: SyncReport,
    pub quiesce_seconds: f64,
    pub boot_seconds: f64,
    /// From launching the quiesce hook to the target's proof of boot.
    pub downtime_seconds: f64,
    pub boot_target: String,
    pub boot_matched: Option<String>,
}

/// Run a user hook through `sh -c`.
fn hook(what: &str, cmd: &str) -> crate::Result<()> {
    let status = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .status()
        .with_context(|| format!("cannot run the {what} command `{cmd}`"))?;
    if !status.success() {
        return Err(coded(
            USAGE,
            format!("the {what} command `{cmd}` failed ({status})"),
        ));
    }
    Ok(())
}

/// Run `--resume` after a failure, keeping the original error.
fn rollback(a: &Cutover, e: crate::Error) -> crate::Error {
    if let Some(cmd) = &a.resume {
        if let Err(r) = hook("resume", cmd) {
            return e.context(format!("and resuming the source failed too: {r:#}"));
        }
        eprintln!("mgear cutover: failed after quiescing; the source was resumed with `{cmd}`");
    }
    e
}

/// `mgear cutover`.
pub fn cutover(a: Cutover) -> crate::Result<i32> {
    let target = crate::spec::Target::parse(&a.boot_target, crate::spec::Bare::Existing)?
        .boot_target()
        .ok_or_else(|| {
            usage(format!(
                "--boot-target {}: cutover boots with local QEMU: give file:, qcow2:, dev: or an NBD URL",
                a.boot_target
            ))
        })?;
    let mut spec = BootSpec::new(target.clone(), a.wait_for.clone());
    spec.timeout = Duration::from_secs(a.boot_timeout);
    if a.wait_for.is_empty() {
        return Err(usage(
            "--wait-for must not be empty: give a regex that proves the boot, e.g. 'login:'",
        ));
    }
    if let Target::File(p) | Target::Qcow2(p) = &target {
        // Find a typo before the source is quiesced, not after.
        std::fs::metadata(p)
            .with_context(|| format!("--boot-target {}: cannot find the volume", a.boot_target))?;
    }

    let presync = if a.no_presync {
        None
    } else {
        eprintln!("mgear cutover: warm sync while the source runs");
        Some(run_sync(&a.sync)?)
    };

    eprintln!("mgear cutover: quiescing the source: {}", a.quiesce);
    let down = Instant::now();
    hook("quiesce", &a.quiesce).map_err(|e| rollback(&a, e))?;
    let quiesce_seconds = down.elapsed().as_secs_f64();

    let final_sync = run_sync(&a.sync).map_err(|e| rollback(&a, e))?;
    if !final_sync.stats.verified {
        return Err(rollback(&a, coded(FOUND, "the final sync did not verify")));
    }

    eprintln!(
        "mgear cutover: booting {} (QEMU, TCG, no network)",
        a.boot_target
    );
    let boot_start = Instant::now();
    let report = mgear_boot::boot(&spec)
        .map_err(|e| rollback(&a, crate::Error::from(e).context("booting the target")))?;
    if !report.booted() {
        return Err(rollback(
            &a,
            coded(
                FOUND,
                format!(
                    "the target did not prove it booted ({}); console tail:\n{}",
                    report.detail,
                    report.console_tail(20)
                ),
            ),
        ));
    }
    // The proof is the moment the marker appeared, not when QEMU was shut down afterwards.
    let boot_seconds = report.time_to_marker_secs.unwrap_or(report.elapsed_secs);
    let downtime_seconds = (boot_start - down).as_secs_f64() + boot_seconds;
    let r = CutoverReport {
        command: "cutover",
        name: a.sync.name.clone(),
        presync,
        final_sync,
        quiesce_seconds,
        boot_seconds,
        downtime_seconds,
        boot_target: a.boot_target.clone(),
        boot_matched: report.matched.clone(),
    };
    if a.sync.json || crate::output::json() {
        crate::output::emit(&r)?;
    } else {
        if let Some(p) = &r.presync {
            println!(
                "warm sync (source running): {} chunks sent in {:.2} s",
                p.stats.chunks_sent, p.seconds
            );
        }
        print_summary(&r.final_sync);
        println!(
            "cutover of {} complete: target booted ({:?} seen on its console)",
            r.name,
            r.boot_matched.as_deref().unwrap_or("")
        );
        println!(
            "downtime: {:.2} s (quiesce {:.2} s, final sync {:.2} s, boot to proof {:.2} s)",
            r.downtime_seconds, r.quiesce_seconds, r.final_sync.seconds, r.boot_seconds
        );
    }
    // The serve does not know this was the last sync: a stray one (a cron job at the old
    // source) would still change what is now the machine's disk.
    eprintln!(
        "mgear cutover: next: stop `mgear serve` at the target now (Ctrl-C): the volume is the \
         machine's disk from here, and the serve would still apply a later sync to it"
    );
    Ok(OK)
}
