//! `mgear cutover`: the only step that needs downtime.
//!
//! 0. every argument is checked first (the boot target, the regex, the
//!    sync's address, key and source), before the warm sync and long before
//!    the source is quiesced: a typo found after quiescing costs downtime;
//! 1. a warm sync while the source still runs (skipped with `--no-presync`),
//!    so the quiesced sync has little left to send; it names the capture, so a
//!    boot target a serve on this host does not keep is refused here;
//! 2. `--quiesce CMD` (downtime starts when it is launched);
//! 3. the final sync, which must verify;
//! 4. boot `--boot-target` under local QEMU (`-accel tcg -nic none`, via
//!    `mgear_boot`) until `--wait-for` appears on its console; downtime ends
//!    at that proof of boot.
//!
//! If anything fails from the quiesce on, or Ctrl-C / SIGTERM stops the
//! cutover (the sync under way stops between chunks, the proof boot's guest
//! is stopped, a hook under way is finished), `--resume CMD` runs so the
//! source serves again (exit 3 for a stop); the target volume is left as the
//! last sync wrote it. The hooks run in a process group of their own, so the
//! terminal's Ctrl-C never kills the `--resume` that brings the source back. The
//! two commands' standard output goes to mgear's standard error: mgear's
//! standard output is the result (with `--json`, exactly one JSON object).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::Context;
use crate::spec::{Bare, Source};
use mgear_boot::{BootSpec, Target};
use serde::Serialize;

use super::{prepare, print_summary, run_ready, Cutover, SyncReport};
use crate::exit::{coded, coded_next, usage, FOUND, IO, OK};

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
    /// What was said on stderr before the quiesce (one disk of a machine set cut over alone).
    pub warnings: Vec<String>,
}

/// Run a user hook through `sh -c`; its standard output goes to our
/// standard error (see the module doc). A command that fails is exit 3: the
/// arguments were fine, the source's environment did not cooperate. The
/// caller says what that left and what to do.
fn hook(what: &str, cmd: &str) -> crate::Result<()> {
    use std::os::unix::process::CommandExt;
    // A process group of its own: the terminal's Ctrl-C reaches mgear, which then resumes the
    // source; it must not also kill the `--resume` command that does it (nor cut a quiesce
    // half-way: mgear stops after it and resumes).
    let status = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::from(std::io::stderr()))
        .process_group(0)
        .status()
        .with_context(|| format!("cannot run the --{what} command `{cmd}`"))?;
    if !status.success() {
        return Err(coded(
            IO,
            format!("the --{what} command `{cmd}` failed ({status})"),
        ));
    }
    Ok(())
}

/// Run `--resume` after a failure, keeping the original error.
fn rollback(a: &Cutover, e: crate::Error) -> crate::Error {
    let what = match crate::signals::stop_requested() {
        true => "stopped (Ctrl-C or SIGTERM)",
        false => "failed",
    };
    // Said in the error itself (so in `--json`'s one object too): whether the source serves
    // again is what the operator must know first.
    match &a.resume {
        Some(cmd) => match hook("resume", cmd) {
            Err(r) => e.context(format!(
                "cutover {what} after quiescing, and resuming the source failed too ({r:#}): \
                 check the source and start it by hand"
            )),
            Ok(()) => e.context(format!(
                "cutover {what} after quiescing; the source was resumed with `{cmd}`"
            )),
        },
        None => e.context(format!(
            "cutover {what} after quiescing; no --resume was given: the source is still \
             quiesced, start it again by hand"
        )),
    }
}

/// Ctrl-C or SIGTERM came between two steps: the error that stops the cutover there (exit 3;
/// the caller resumes the source once it was quiesced).
fn stop_between_steps() -> crate::Result<()> {
    if !crate::signals::stop_requested() {
        return Ok(());
    }
    Err(crate::exit::coded_hint(
        IO,
        "cutover stopped by Ctrl-C or SIGTERM; the target was not booted",
        "nothing is damaged: the target volume holds what the last sync sent; run the same \
         cutover again when the source may go down",
    ))
}

/// The `--quiesce` command failed (`e`): resume the source if `--resume`
/// says how, and say what state it was left in.
fn quiesce_failed(a: &Cutover, e: crate::Error) -> crate::Error {
    let after = match &a.resume {
        None => "no --resume was given: the source may be partly stopped, check it".to_string(),
        Some(cmd) => match hook("resume", cmd) {
            Ok(()) => format!("the source was resumed with `{cmd}`"),
            Err(r) => format!("resuming the source failed too ({r:#}): check it"),
        },
    };
    coded_next(
        IO,
        format!("{e:#}; nothing was synced after it and the target was not booted; {after}"),
        "fix the --quiesce command (run it by hand on the source to see why it fails), then run \
         the cutover again",
    )
}

/// The boot that proves the cutover: `--boot-target`, `--wait-for` and
/// `--boot-timeout`, checked without running anything.
fn boot_spec(a: &Cutover) -> crate::Result<BootSpec> {
    let target = crate::spec::Target::parse_flag("--boot-target", &a.boot_target, Bare::Existing)?
        .boot_target()
        .ok_or_else(|| {
            usage(format!(
                "--boot-target {}: cutover boots with local QEMU: give file:, qcow2:, dev: or an NBD URL",
                a.boot_target
            ))
        })?;
    if a.wait_for.is_empty() {
        return Err(usage(
            "--wait-for must not be empty: give a regex that proves the boot, e.g. 'login:'",
        ));
    }
    if a.boot_timeout == 0 {
        return Err(usage(
            "--boot-timeout 0 gives the target no time to boot: give the seconds to wait for \
             --wait-for",
        ));
    }
    let timeout = Duration::from_secs(a.boot_timeout);
    // Compiled now, not when the target boots after the final sync.
    mgear_boot::Expectation::new(&a.wait_for, timeout)?;
    refuse_the_source(a, &target)?;
    if let Target::File(p) | Target::Qcow2(p) | Target::Dev(p) = &target {
        std::fs::metadata(p)
            .with_context(|| format!("--boot-target {}: cannot find the volume", a.boot_target))?;
    }
    let mut spec = BootSpec::new(target, a.wait_for.clone());
    spec.timeout = timeout;
    // Ctrl-C during the proof boot stops the guest at once; the source is then resumed.
    spec.stop = Some(crate::signals::stop_requested);
    Ok(spec)
}

/// Refuse a `--boot-target` that is the `--source` (by any name: the same
/// file or device, a link to it, a partition of it, the same NBD export).
/// Booting the source's own disk would "prove" a boot of the machine that
/// is being migrated away from, and call the target booted.
fn refuse_the_source(a: &Cutover, target: &Target) -> crate::Result<()> {
    let same = match (Source::parse(&a.sync.source)?, target) {
        (Source::Path(src), Target::File(p) | Target::Qcow2(p) | Target::Dev(p)) => {
            crate::guard::overlaps(p, &src)
        }
        (Source::Nbd(src), Target::Nbd(url)) => src.to_string() == *url,
        // An export this host serves of the boot target's own file (`qemu-nbd web.vol`):
        // the cutover synced nothing and booted the source's disk, exit 0.
        (Source::Nbd(src), Target::File(p) | Target::Qcow2(p) | Target::Dev(p)) => {
            crate::guard::served_files(&src)
                .iter()
                .any(|(_, f)| crate::guard::overlaps(p, f))
        }
        _ => false,
    };
    if same {
        return Err(usage(format!(
            "--boot-target {} is the --source {} (the same file or device under another name, or a \
             part of it): booting it would prove nothing about the target; give the volume \
             `mgear serve` keeps in sync (its --target)",
            a.boot_target, a.sync.source
        )));
    }
    Ok(())
}

/// The file or device a raw `--boot-target` (`file:`, `dev:`) names; `None` for a qcow2 or
/// NBD boot target, which is not read here.
fn raw_boot_target(a: &Cutover) -> crate::Result<Option<std::path::PathBuf>> {
    Ok(
        match crate::spec::Target::parse_flag("--boot-target", &a.boot_target, Bare::Existing)? {
            crate::spec::Target::File(p) | crate::spec::Target::Dev(p) => Some(p),
            _ => None,
        },
    )
}

/// Before the quiesce: a serve on this host whose record says it keeps another volume of
/// capture `capture_id` in sync than the file or device `--boot-target` names.
fn served_elsewhere(a: &Cutover, capture_id: &[u8; 16]) -> crate::Result<()> {
    let Some(path) = raw_boot_target(a)? else {
        return Ok(());
    };
    if super::target::served_last(&path, capture_id, &a.sync.name) == Some(false) {
        return Err(coded(
            crate::exit::USAGE,
            format!(
                "--boot-target {} is not the volume the syncs write: a serve on this host keeps \
                 another volume in sync for this capture (this one is a copy, was replaced \
                 since, or the serve's volume is an NBD export or a device); give the volume \
                 `mgear serve` keeps in sync (its --target); nothing was quiesced",
                a.boot_target
            ),
        ));
    }
    Ok(())
}

/// The volume `--boot-target` names must be the one the final sync brought up to date,
/// which `mgear serve` keeps (elsewhere, by its own name): booting another (an older
/// copy, the wrong file) "proved" a boot of a machine that never got the last changes,
/// and the cutover reported complete. With the source quiesced and the final sync
/// verified, that volume reads as the source does: a raw boot target (`file:`, `dev:`)
/// is compared with it by size, by every chunk this cutover's syncs sent (`sent`, of
/// `chunk` bytes: what a copy made before them lacks) and by [`SAMPLES`] chunks of 1 MiB
/// spread over the disk. A qcow2 or NBD boot target is not read here.
fn boot_target_is_synced(
    a: &Cutover,
    sent: &[u64],
    chunk: u64,
    capture_id: Option<[u8; 16]>,
) -> crate::Result<()> {
    use std::os::unix::fs::FileExt as _;
    const SAMPLES: u64 = 32;
    const CHUNK: u64 = 1 << 20;
    let Some(path) = raw_boot_target(a)? else {
        return Ok(());
    };
    let not_synced = |why: String| {
        coded(
            crate::exit::USAGE,
            format!(
                "--boot-target {} is not the volume the final sync wrote: {why}; boot the volume \
                 `mgear serve` keeps in sync (its --target), nothing was booted",
                a.boot_target
            ),
        )
    };
    // Where the serve runs on this host, its record names the file it keeps in sync: a copy
    // made before the last syncs differs only where they wrote, which the sample below
    // missed (the copy was booted and the cutover called complete).
    let served = capture_id.and_then(|id| super::target::served_last(&path, &id, &a.sync.name));
    // The very volume the serve keeps: a difference is the source writing on after the
    // quiesce, not the wrong volume (it was told to boot the file it had just refused).
    let moved_on = |why: String| {
        crate::exit::coded_hint(
            crate::exit::USAGE,
            format!(
                "--boot-target {} is the volume the serve keeps in sync, but it no longer reads \
                 as the quiesced source: {why}; the source changed after --quiesce (a quiesce \
                 that does not stop every write), or another program wrote the volume since \
                 the final sync (serve's log says so); nothing was booted",
                a.boot_target
            ),
            "make --quiesce stop every write to the source (stop the service or the VM, \
             `fsfreeze -f` the file systems on it), keep other programs off the volume, and \
             run the cutover again",
        )
    };
    if served == Some(false) {
        return Err(not_synced(
            "a serve on this host keeps another volume in sync for this capture (this one is a \
             copy, was replaced since, or the serve's volume is an NBD export or a device)"
                .into(),
        ));
    }
    let mut source = crate::source::open(&a.sync.source, None)?;
    let target = std::fs::File::open(&path)
        .with_context(|| format!("opening --boot-target {}", a.boot_target))?;
    let size = source.len();
    // The end, not the metadata length: a block device's is 0.
    let target_size = std::io::Seek::seek(&mut &target, std::io::SeekFrom::End(0))
        .with_context(|| format!("reading the size of --boot-target {}", a.boot_target))?;
    // A device may be larger than the disk (a cloud volume rounded up, which serve keeps
    // in sync): the disk is its first bytes.
    let device = super::target::device_key(&path).is_some();
    if target_size != size && !(device && target_size > size) {
        let why = format!("it holds {target_size} bytes, the source {size}");
        return Err(match served {
            Some(true) => moved_on(why),
            _ => not_synced(why),
        });
    }
    let (mut want, mut got) = (Vec::new(), Vec::new());
    let synced = sent
        .iter()
        .map(|i| (i.saturating_mul(chunk), chunk))
        .filter(|(at, _)| *at < size);
    let spread = (0..SAMPLES).map(|k| ((k * size / SAMPLES) / CHUNK * CHUNK, CHUNK));
    for (at, span) in synced.chain(spread) {
        let len = span.min(size - at) as usize;
        want.resize(len, 0);
        got.resize(len, 0);
        source.read_exact_at(at, &mut want)?;
        target
            .read_exact_at(&mut got, at)
            .with_context(|| format!("reading --boot-target {}", a.boot_target))?;
        if want != got {
            let range = format!("{at}..{}", at + len as u64);
            return Err(match served {
                Some(true) => moved_on(format!("its bytes at {range} differ from the source's")),
                _ => not_synced(format!(
                    "its bytes at {range} differ from the source's (quiesced, so the synced \
                     volume holds them; unless the source changed after --quiesce: check that \
                     it stops every write)"
                )),
            });
        }
    }
    Ok(())
}

/// Whether the target at `to` (`HOST:PORT`) takes a connection, asked before a `--no-presync`
/// cutover quiesces the source. The connection is closed before any frame: the serve logs it
/// as a session that ended early and goes on (`--once` too: it did not complete).
fn reachable(to: &str, after_warm_sync: bool) -> crate::Result<()> {
    use std::net::ToSocketAddrs;
    let mut last = None;
    for addr in to
        .to_socket_addrs()
        .map_err(|e| crate::err!("--to {to}: {e}"))?
    {
        match std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(10)) {
            Ok(s) => return speaks_sync(s, to),
            Err(e) => last = Some(e),
        }
    }
    Err(crate::exit::coded_hint(
        crate::exit::IO,
        format!(
            "cannot connect to the target at --to {to}{}{}: nothing was quiesced",
            last.map_or(String::new(), |e| format!(" ({e})")),
            if after_warm_sync {
                " after the warm sync (a `mgear serve --once` ends after its one sync: a \
                 cutover makes two, and needs a serve without --once)"
            } else {
                ""
            }
        ),
        "start `mgear serve` on the volume at the target (SYNC.md), or correct --to, then run \
         the cutover again",
    ))
}

/// Whether the peer of `s` is a `mgear serve`: a HELLO naming a capture no serve holds is
/// answered at once with an ERROR frame (before any volume is read). Another program there
/// (an SSH server, a silent listener) had the source quiesced and the final sync fail, or
/// hang with the source down.
/// The name a cutover's probe says HELLO with (no capture has it: names have no spaces), so
/// a serve logs the probe as one.
pub(crate) const PROBE_NAME: &str = "(a cutover asking whether this is a mgear serve)";

fn speaks_sync(mut s: std::net::TcpStream, to: &str) -> crate::Result<()> {
    use super::wire::{self, ty, Hello};
    let not = |why: String| {
        crate::exit::coded_hint(
            crate::exit::USAGE,
            format!("--to {to} {why}: it is not a `mgear serve`; nothing was quiesced"),
            "start `mgear serve` on the volume at the target (SYNC.md), or correct --to, then \
             run the cutover again",
        )
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(10)));
    let hello = Hello {
        name: PROBE_NAME.into(),
        size: 0,
        nonce: [0; 32],
    }
    .encode();
    if let Err(e) = wire::send(&mut s, ty::HELLO, &hello) {
        return Err(not(format!("took the connection but not a HELLO ({e})")));
    }
    match wire::recv(&mut s, to) {
        // A `serve --once` whose one sync (the warm one) completed takes no final sync: the
        // source was quiesced for retries that could not succeed.
        Ok((ty::ERROR, p))
            if wire::Refusal::decode(&p).is_ok_and(|r| r.code == wire::err::DONE_ONCE) =>
        {
            Err(crate::exit::coded_hint(
                crate::exit::IO,
                format!(
                    "--to {to} is a `mgear serve --once` whose one sync completed: it takes no \
                     final sync; nothing was quiesced"
                ),
                "start `mgear serve` on the volume again without --once (a cutover makes two \
                 syncs, the warm one and the final one), then run the cutover again",
            ))
        }
        Ok((ty::ERROR | ty::WELCOME, _)) => Ok(()),
        Ok((t, _)) => Err(not(format!("answered HELLO with {}", wire::type_name(t)))),
        Err(e) => Err(not(format!(
            "took the connection but did not answer as a sync target within 10 s ({e})"
        ))),
    }
}

/// `mgear cutover`.
pub fn cutover(a: Cutover) -> crate::Result<i32> {
    let spec = boot_spec(&a)?;
    // QEMU missing is found now, not after the source went down.
    mgear_boot::LocalQemu::new()?;
    // One disk of a machine set: its other disks get no final sync and are not booted with
    // it; it went straight on to the quiesce without a word.
    let mut warnings = Vec::new();
    // A data disk: the proof boot of it alone finds nothing to start, after the source was
    // quiesced (downtime for nothing). Refused before anything is done.
    if let Some((set, k)) =
        image_format::set::parse_disk_stream_name(&a.sync.name).filter(|(_, k)| *k > 0)
    {
        return Err(usage(format!(
            "{} is disk {k} of machine set {set}, a data disk: a cutover boots the disk it moves \
             as the proof, and a data disk alone boots nothing (the source would be quiesced \
             for a boot that cannot succeed); nothing was done. Cut the machine over as SYNC.md \
             \"A machine of several disks\" shows: one quiesce, a final sync of every disk, one \
             boot with every disk attached",
            a.sync.name
        )));
    }
    if let Some((set, k)) = image_format::set::parse_disk_stream_name(&a.sync.name) {
        let w = format!(
            "{} is disk {k} of machine set {set}: this cutover moves that disk alone (its final \
             sync, and a boot with it alone); the set's other disks get no final sync. A \
             machine of several disks is cut over disk by disk under one quiesce (SYNC.md, \
             \"A machine of several disks\")",
            a.sync.name
        );
        eprintln!("mgear cutover: warning: {w}");
        crate::output::warn_before_failing(&w);
        warnings.push(w);
    }
    // Ctrl-C and SIGTERM stop the sync under way between chunks and then resume the source
    // (they ended the process with the source quiesced, or were not heard at all).
    crate::signals::install();
    let mut ready = prepare(&a.sync)?;

    // Without the warm sync nothing reached the target before the quiesce: a serve not
    // started, or a wrong --to, was found with the source down (10 s of it, or all the
    // --retries allow). With it, a wrong --to was retried for 10 s and ended "re-run to
    // continue", not saying the source was never quiesced nor what to correct.
    reachable(&a.sync.to, false)?;
    let presync = if a.no_presync {
        None
    } else {
        eprintln!("mgear cutover: warm sync while the source runs");
        Some(
            run_ready(&a.sync, &mut ready)
                .map_err(|e| e.context("the warm sync failed; nothing was quiesced"))?,
        )
    };

    // Asked again after the warm sync: a `serve --once` took it as its one sync and ended,
    // and the source was quiesced for a final sync that could not connect.
    if presync.is_some() {
        reachable(&a.sync.to, true)?;
    }
    // A serve on this host that keeps another volume in sync: known now, from the capture id
    // the warm sync learnt (it was found after the quiesce, a downtime for nothing).
    if let Some(id) = presync.as_ref().and_then(|r| r.stats.capture_id) {
        served_elsewhere(&a, &id)?;
    }
    stop_between_steps()?;
    eprintln!("mgear cutover: quiescing the source: {}", a.quiesce);
    let down = Instant::now();
    hook("quiesce", &a.quiesce).map_err(|e| quiesce_failed(&a, e))?;
    let quiesce_seconds = down.elapsed().as_secs_f64();
    stop_between_steps().map_err(|e| rollback(&a, e))?;

    let final_sync = run_ready(&a.sync, &mut ready).map_err(|e| rollback(&a, e))?;
    if !final_sync.stats.verified {
        return Err(rollback(&a, coded(FOUND, "the final sync did not verify")));
    }
    let sent: Vec<u64> = presync
        .iter()
        .chain(std::iter::once(&final_sync))
        .flat_map(|r| r.stats.sent.iter().copied())
        .collect();
    boot_target_is_synced(
        &a,
        &sent,
        u64::from(final_sync.stats.chunk_size.max(1)),
        final_sync.stats.capture_id,
    )
    .map_err(|e| rollback(&a, e))?;
    stop_between_steps().map_err(|e| rollback(&a, e))?;

    eprintln!(
        "mgear cutover: booting {} (QEMU, TCG, no network)",
        a.boot_target
    );
    let boot_start = Instant::now();
    let report = mgear_boot::boot(&spec)
        .map_err(|e| rollback(&a, crate::Error::from(e).context("booting the target")))?;
    // Stopped while the proof boot ran: the operator asked for the source back.
    stop_between_steps().map_err(|e| rollback(&a, e))?;
    if !report.booted() {
        // What the failure cost is said too: the final sync ran and the source was down all
        // that time (the success path's summary and downtime line were all an operator got).
        let down_for = down.elapsed().as_secs_f64();
        return Err(rollback(
            &a,
            // The volume was synced and verified: what failed is the boot (the generic
            // "the data did not check out" advice would be wrong), and cutover has no
            // --firmware of its own (`mgear boot` does).
            crate::exit::coded_hint(
                FOUND,
                format!(
                    "the target did not prove it booted ({}); the final sync had sent {} and \
                     verified in {:.2} s, and the source had been quiesced {down_for:.2} s \
                     (quiesce {quiesce_seconds:.2} s, boot {:.2} s); console tail:\n{}",
                    report
                        .detail
                        .replace("see --firmware", "see `mgear boot --firmware`"),
                    crate::units::count(final_sync.stats.chunks_sent, "chunk"),
                    final_sync.seconds,
                    report.elapsed_secs,
                    report.console_tail(20)
                ),
                format!(
                    "the final sync verified the serve's volume, and {} was checked against the \
                     source by size and sampled chunks; boot it by hand (`mgear boot --target {} \
                     --wait-for REGEX`, with --firmware or --bus if the machine needs them) to \
                     see why it does not come up",
                    a.boot_target, a.boot_target
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
        warnings,
    };
    if a.sync.json || crate::output::json() {
        crate::output::emit(&r)?;
    } else {
        if let Some(p) = &r.presync {
            println!(
                "warm sync (source running): {} sent in {:.2} s",
                crate::units::count(p.stats.chunks_sent, "chunk"),
                p.seconds
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::{code_of, USAGE};

    /// A cutover of `source` onto `boot_target`; nothing else needs to exist.
    fn cutover_args(source: &str, boot_target: &str, wait_for: &str) -> Cutover {
        Cutover {
            sync: crate::sync::Plan {
                source: source.into(),
                to: "127.0.0.1:7410".into(),
                name: "web01".into(),
                key_cache: None,
                dirty_bitmap: None,
                rate_limit: None,
                retries: 0,
                retry_wait: 0.0,
                json: false,
                sign: None,
                force: false,
            },
            quiesce: "true".into(),
            resume: None,
            boot_target: boot_target.into(),
            wait_for: wait_for.into(),
            boot_timeout: 300,
            no_presync: true,
        }
    }

    #[test]
    fn boot_arguments_are_checked_before_anything_runs() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("disk.raw");
        let vol = dir.path().join("vol.raw");
        std::fs::write(&src, [1u8; 4096]).unwrap();
        std::fs::write(&vol, [1u8; 4096]).unwrap();
        let (s, v) = (src.to_str().unwrap(), format!("file:{}", vol.display()));
        assert!(boot_spec(&cutover_args(s, &v, "login:")).is_ok());
        let refused = |a: Cutover| {
            let e = boot_spec(&a).unwrap_err();
            assert_eq!(code_of(&e), USAGE, "{e:#}");
            format!("{e:#}")
        };
        // A regex that does not compile, found before the warm sync.
        let m = refused(cutover_args(s, &v, "("));
        assert!(m.contains("--wait-for is not a valid regex"), "{m}");
        // A bad kind names the flag it came from.
        let m = refused(cutover_args(s, "bogus:xyz", "login:"));
        assert!(
            m.starts_with("--boot-target bogus:xyz: say which kind"),
            "{m}"
        );
        let mut a = cutover_args(s, &v, "login:");
        a.boot_timeout = 0;
        assert!(refused(a).contains("--boot-timeout 0"));
    }

    #[test]
    fn the_source_itself_is_refused_as_boot_target_by_any_name() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("disk.raw");
        std::fs::write(&src, [1u8; 4096]).unwrap();
        let link = dir.path().join("link.raw");
        std::os::unix::fs::symlink(&src, &link).unwrap();
        let hard = dir.path().join("hard.raw");
        std::fs::hard_link(&src, &hard).unwrap();
        let dotted = dir.path().join(".").join("disk.raw");
        let s = src.to_str().unwrap();
        for t in [&src, &link, &hard, &dotted] {
            for kind in ["file:", "qcow2:", ""] {
                let bt = format!("{kind}{}", t.display());
                let e = boot_spec(&cutover_args(s, &bt, "login:")).unwrap_err();
                assert_eq!(code_of(&e), USAGE, "{bt}: {e:#}");
                assert!(
                    format!("{e:#}").contains(&format!("--boot-target {bt} is the --source")),
                    "{e:#}"
                );
            }
        }
        // The source spelled with a kind too.
        let e = boot_spec(&cutover_args(
            &format!("raw:{s}"),
            &format!("file:{}", link.display()),
            "login:",
        ))
        .unwrap_err();
        assert_eq!(code_of(&e), USAGE);
        // The same NBD export.
        let nbd = "nbd+unix:///web01?socket=/run/web01.sock";
        let e = boot_spec(&cutover_args(nbd, nbd, "login:")).unwrap_err();
        assert!(format!("{e:#}").contains("is the --source"), "{e:#}");
    }

    #[test]
    fn a_failing_quiesce_names_the_command_its_status_and_what_became_of_the_source() {
        let dir = tempfile::tempdir().unwrap();
        let resumed = dir.path().join("resumed");
        let mut a = cutover_args("disk.raw", "file:vol.raw", "login:");
        a.quiesce = "exit 7".into();
        let e = hook("quiesce", &a.quiesce).unwrap_err();
        // The user's command failed, not the arguments: 3, as for the environment.
        assert_eq!(code_of(&e), IO);
        let e = quiesce_failed(&a, e);
        let m = format!("{e:#}");
        assert_eq!(code_of(&e), IO, "{m}");
        assert!(
            m.contains("the --quiesce command `exit 7` failed (exit status: 7)"),
            "{m}"
        );
        assert!(m.contains("no --resume was given"), "{m}");
        // What to do is in the message (the human error line) and the hint (--json).
        assert_eq!(m.matches("fix the --quiesce command").count(), 1, "{m}");
        let hint = crate::exit::hint(&e, "cutover");
        assert!(hint.starts_with("fix the --quiesce command"), "{hint}");
        a.resume = Some(format!("touch {}", resumed.display()));
        let m = format!(
            "{:#}",
            quiesce_failed(&a, hook("quiesce", "exit 7").unwrap_err())
        );
        assert!(m.contains("the source was resumed with `touch"), "{m}");
        assert!(resumed.exists());
        a.resume = Some("exit 9".into());
        let m = format!(
            "{:#}",
            quiesce_failed(&a, hook("quiesce", "exit 7").unwrap_err())
        );
        assert!(
            m.contains("resuming the source failed too (the --resume command `exit 9` failed"),
            "{m}"
        );
    }
}
