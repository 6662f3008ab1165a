//! `mgear appliance`: talk to the appliance (or `mgear-appliance-sim`) over
//! its console.
//!
//! ```text
//! mgear appliance [--port PATH] [--json] info
//! mgear appliance provision [--pin-file FILE]   # factory -> locked; makes the identity
//! mgear appliance unlock [--pin-file FILE]      # locked -> unlocked (medium writable; refused once sealed)
//! mgear appliance lock
//! mgear appliance verify                        # keyless check of every capture
//! mgear appliance seal                          # verify, write-protect, sign
//! mgear appliance arrival                       # at the target: verify again, compare, sign our challenge
//! mgear appliance attestations [--out DIR]      # the seal/arrival attestations (files for ingest)
//! mgear appliance log [--verify [--trust-appliance FP]]  # custody log; --verify checks chain,
//!                                               # signatures and that no attested record was cut off
//! mgear appliance erase [--overwrite] [--pin-file FILE] [--certificate FILE] --yes
//!                                               # crypto-erase (needs the PIN); the certificate
//!                                               # holds the appliance-signed custody record
//! mgear appliance list                          # attached appliances (USB id 1209:4d47)
//! ```
//!
//! Without `--port` the appliance is found by its USB vendor/product id.
//! PINs are read from the terminal (without echo) unless `--pin-file` is
//! given; they never appear on the command line. Human output shows times as
//! ISO-8601 UTC and keys and digests as hex (`render.rs`); `--json` keeps
//! the protocol's machine form, byte strings as hex. Long operations (seal,
//! arrival, verify, erase) report progress with an ETA; the host waits as
//! long as progress keeps coming. Exit codes: 0 success,
//! 1 a check failed (verify/arrival problems, a damaged custody log),
//! 2 refused (wrong PIN, wrong state) or bad usage, 3 I/O.

mod client;
mod discover;
mod gate;
mod nbd_device;
mod render;
// The HID transport's framing; the hidapi transport that uses it on a real
// board is not written yet, so it is compiled for its tests only.
#[cfg(test)]
mod hid;

use std::path::{Path, PathBuf};

use crate::error::Context;
use crate::{bail, err};

use crate::exit::{coded, coded_hint, usage, FOUND, USAGE};
use image_format::store::FatStore;
use image_format::Store;
use mgear_appliance_api::attest::{
    check_log_covers, full_fingerprint, verify_attestation, Attestation,
};
use mgear_appliance_api::custody::{verify_log, Event, LogRecord};
use mgear_appliance_api::protocol::{
    DeviceState, Info, Pin, Problem, Request, Response, VerifyReport,
};
use zeroize::Zeroizing;

pub use client::{ApplianceError, Client};
pub use gate::{find_attestations, gate_port, ingest_gate};

/// `mgear appliance`, typed (the binary's `cli::appliance` fills it in from the flags).
#[derive(Debug)]
pub struct Plan {
    /// The appliance's console: a serial device or the simulator's
    /// --console-link. Default: the one attached appliance found by USB id.
    pub port: Option<PathBuf>,
    /// Print machine-readable JSON instead of text.
    pub json: bool,
    pub cmd: Cmd,
}

/// What to ask the appliance.
#[derive(Debug)]
pub enum Cmd {
    /// State, identity, medium and counters.
    Info,
    /// First use: set the PIN and create the appliance's Ed25519 identity.
    Provision {
        /// Read the PIN from this file (first line) instead of the terminal.
        pin_file: Option<PathBuf>,
    },
    /// Enter the PIN: the medium accepts writes until `lock` or `seal`.
    Unlock {
        /// Read the PIN from this file (first line) instead of the terminal.
        pin_file: Option<PathBuf>,
    },
    /// Make the medium read-only again.
    Lock,
    /// Keyless verification of every capture on the medium.
    Verify,
    /// Verify, write-protect the medium for good and sign the seal attestation.
    Seal,
    /// At the target: verify again, compare with the seal, sign the arrival attestation.
    Arrival,
    /// Show the stored attestations, or save them as files for ingest.
    Attestations {
        /// Write DIR/SEAL and DIR/ARRIVAL (what `mgear ingest` checks).
        out: Option<PathBuf>,
    },
    /// Print the custody log.
    Log {
        /// Check the hash chain, every signature, and that the log still
        /// holds every record the stored attestations pin.
        verify: bool,
        /// Verify against this pinned identity (the 64-hex-digit fingerprint
        /// `appliance info` printed when you provisioned it) instead of the
        /// key the device reports.
        trust_appliance: Option<String>,
    },
    /// Crypto-erase: destroy the key slots on the medium and the appliance's
    /// secrets. Needs the PIN (asked for unless the appliance is unlocked;
    /// always on a sealed appliance).
    Erase {
        /// Also overwrite the whole medium afterwards.
        overwrite: bool,
        /// Read the PIN from this file (first line) instead of the terminal.
        pin_file: Option<PathBuf>,
        /// Confirm: this cannot be undone.
        yes: bool,
        /// Write an erase certificate: FILE (JSON) and FILE with its extension replaced by `.txt` (r.json: r.txt): the
        /// appliance's identity, what was erased and when, and the custody
        /// record of the erase, signed by the appliance and checked here.
        certificate: Option<PathBuf>,
    },
    /// List attached appliances (USB serial devices with MotionGear's id).
    List,
}

/// Run `mgear appliance`; returns the process exit code.
pub fn run(args: Plan) -> crate::Result<i32> {
    let json = args.json || crate::output::json();
    if let Cmd::Erase { yes: false, .. } = args.cmd {
        // Refuse before looking for the appliance: a usage error stays one.
        return Err(usage("erase destroys the key slots on the medium (the capture can no longer be decrypted, even with target.key) and the appliance identity for good; add --yes to confirm"));
    }
    if let Cmd::List = args.cmd {
        let found = discover::list()?;
        if json {
            let v: Vec<_> = found
                .iter()
                .map(|f| serde_json::json!({"port": f.port, "serial_number": f.serial_number}))
                .collect();
            render::emit(true, &serde_json::json!({ "appliances": v }))?;
        } else if found.is_empty() {
            println!("no appliance attached");
        } else {
            for f in &found {
                println!(
                    "{}\t{}",
                    f.port.display(),
                    f.serial_number.as_deref().unwrap_or("-")
                );
            }
        }
        return Ok(0);
    }
    // The appliance does this work on its own once asked: a signal ends only the host's
    // wait. It killed the command with no word (and a second one was let through), while
    // the appliance went on and sealed.
    let working = match &args.cmd {
        Cmd::Seal => Some("seal"),
        Cmd::Arrival => Some("arrival check"),
        Cmd::Verify => Some("keyless verification"),
        Cmd::Erase { .. } => Some("erase"),
        _ => None,
    };
    if let Some(what) = working {
        crate::signals::install_exit_at_once_saying(
            &format!(
                "stopped waiting for the appliance (Ctrl-C or SIGTERM): a {what} it began goes \
                 on inside it, which the host cannot stop"
            ),
            "`mgear appliance info` shows its state once it is done, `mgear appliance log` \
             what it did; run the same command again where it did not finish",
        );
    }
    let port = resolve_port(args.port.as_deref())?;
    let mut c = Client::open(&port)?;
    let expect = match &args.cmd {
        Cmd::Provision { .. } | Cmd::Lock => Some(Some(DeviceState::Locked)),
        Cmd::Unlock { .. } => Some(Some(DeviceState::Unlocked)),
        Cmd::Seal => Some(Some(DeviceState::Sealed)),
        Cmd::Erase { .. } => Some(Some(DeviceState::Erased)),
        Cmd::Arrival => Some(None),
        _ => None,
    };
    match run_cmd(&mut c, args.cmd, json, &port) {
        Ok(code) => match expect {
            Some(want) => state_after(&mut c, json, code, want),
            None => Ok(code),
        },
        // The appliance refused (wrong PIN, wrong state): exit 2, with its
        // reason and the state it is really in.
        Err(e) => match e.find::<ApplianceError>() {
            Some(ae) => {
                let mut msg = on_appliance(&ae.to_string(), &port);
                match info(&mut c) {
                    Ok(i) => {
                        // The firmware's own message often names the state already ("the
                        // appliance is already sealed").
                        let word = i.state.as_str();
                        if ![
                            format!("is {word}"),
                            format!("already {word}"),
                            format!("has {word}"),
                        ]
                        .iter()
                        .any(|s| msg.contains(s.as_str()))
                        {
                            msg.push_str(&format!("; the appliance is {word}"));
                        }
                        // The next step is the hint too (`--json` had the generic one). A
                        // seal refused for damage wants the damage mended, not more captures.
                        use mgear_appliance_api::protocol::ErrorCode;
                        let next = if ae.code == ErrorCode::WrongPin {
                            // Its next step read "unlock it", the command that just failed:
                            // a script retrying it spends the attempts until the erase.
                            "check the PIN (file) before the next attempt; never retry a PIN \
                             automatically: every wrong one counts toward the erase"
                                .to_string()
                        } else if ae.code == ErrorCode::BackOff {
                            // "unlock it" read as: retry at once, which the back-off refuses
                            // again (it does not count toward the erase, but says the same).
                            // The PIN came with the command that was refused (an unlock, or
                            // the erase of a sealed appliance, which is never unlocked): that
                            // command is what to repeat ("unlock again" of a sealed one).
                            "wait the time the message gives, check the PIN (file), then run \
                             the command again; every wrong PIN counts toward the erase"
                                .to_string()
                        } else if ae.code == ErrorCode::NotSealed {
                            // Asked at the target: sealing it there would have the appliance
                            // vouch for whatever the courier left on it ("seal it first").
                            "at the capture site, unlock it and seal it (`mgear appliance \
                             seal`) before it ships; at the target, an appliance that arrives \
                             unsealed is vouched for by nothing: do not seal it here, keep it as \
                             it is and ask the capture site (ingest it only against the site's \
                             signature, --trust SITE.pub)"
                                .to_string()
                        } else if ae.code == ErrorCode::VerifyFailed
                            && msg.contains("unfinished generation")
                        {
                            // A capture still writing (or cut) is no damage: "remove the
                            // damaged capture" of one that went on to finish.
                            format!(
                                "a capture on it is unfinished: one still writing through the \
                                 appliance finishes first (wait for it), one that was cut is \
                                 resumed (the same capture command) or removed (`mgear capture \
                                 --abort --appliance {p} --name NAME`, with an `--appliance` \
                                 for every other appliance of a span it spans); then seal again",
                                p = crate::output::sh(port.display().to_string())
                            )
                        } else if ae.code == ErrorCode::VerifyFailed {
                            format!(
                                "run `mgear appliance --port {p} verify`: each PROBLEM line \
                                 names what is damaged; remove the damaged capture (`mgear \
                                 medium rm --force --appliance {p} --name NAME`, for a disk of \
                                 a machine set NAME is the set's) and capture it again; then \
                                 seal again",
                                p = crate::output::sh(port.display().to_string())
                            )
                        } else {
                            next_step(i.state).to_string()
                        };
                        Err(crate::exit::coded_next(
                            refusal_code(ae.code),
                            msg,
                            format!("next: {next}"),
                        ))
                    }
                    Err(_) => Err(coded(refusal_code(ae.code), msg)),
                }
            }
            None => Err(e),
        },
    }
}

/// Exit code of a refusal: the appliance's storage failing is an I/O error (3), its check of
/// the medium failing (a seal refused for damage or an unfinished capture) a finding (1), as
/// `appliance verify` says it; the rest a refusal of the operator's asking (2). A seal refused
/// for damage exited 2, which a script reads as "already sealed" (also 2), and shipped it.
fn refusal_code(code: mgear_appliance_api::protocol::ErrorCode) -> i32 {
    use mgear_appliance_api::protocol::ErrorCode;
    match code {
        ErrorCode::Storage => crate::exit::IO,
        ErrorCode::VerifyFailed => crate::exit::FOUND,
        _ => USAGE,
    }
}

/// The next step an operator can take in `state`, naming commands that exist.
pub fn next_step(state: DeviceState) -> &'static str {
    match state {
        DeviceState::Factory => "provision it: `mgear appliance provision`",
        DeviceState::Locked => {
            "unlock it (`mgear appliance unlock`) to capture onto it or to seal it"
        }
        DeviceState::Unlocked => {
            "capture onto it (`mgear capture --appliance PORT ...`), then `mgear appliance seal` \
             (or `mgear appliance lock`)"
        }
        DeviceState::Sealed => "ship it; at the target run `mgear appliance arrival`",
        DeviceState::Arrived => {
            "save the attestations (`mgear appliance attestations --out DIR`), ingest, and once \
             every ingest that reads this medium has completed (exit 0, not 4: a span's boot \
             sector is written last) and no `mgear serve` will need its key slots again (every \
             serve start reads them: keep it until the cutover is done) `mgear appliance erase \
             --yes`"
        }
        DeviceState::Erased => {
            "nothing more can be written or provisioned; read its custody log \
             (`mgear appliance log --verify`) and return it to the datacenter that issued it"
        }
    }
}

/// After a command that changes the appliance's state, read the state back
/// and report that (never what the command meant to do): a command that
/// succeeded but left another state than `want` fails with exit 1.
fn state_after(
    c: &mut Client,
    json: bool,
    code: i32,
    want: Option<DeviceState>,
) -> crate::Result<i32> {
    let now = info(c)
        .context("reading the appliance's state back after the command")?
        .state;
    if code == 0 {
        if let Some(want) = want.filter(|w| *w != now) {
            return Err(coded(
                crate::exit::FOUND,
                format!(
                    "the appliance reports it is {}, not {}: the command did not take effect; next: {}",
                    now.as_str(),
                    want.as_str(),
                    next_step(now)
                ),
            ));
        }
    }
    if !json {
        // An arrival check that failed leaves the appliance sealed, whose usual next step
        // (run the arrival check) would only find the same.
        let next = if code == crate::exit::FOUND && now == DeviceState::Sealed {
            "do not ingest from it: its medium changed since the seal (above); its custody log \
             (`mgear appliance log --verify`) says what happened to it; ask the capture site for \
             another copy of the shipment"
        } else if code == crate::exit::FOUND && now == DeviceState::Arrived {
            // The medium checked out but the custody log did not: "ingest" was next.
            "the medium is as sealed, but its custody log did not verify (above): keep `mgear \
             appliance log` with the shipment's records and ask the capture site before \
             ingesting (an ingest through this appliance warns of it in its report)"
        } else {
            next_step(now)
        };
        println!("appliance state: {}; next: {next}", now.as_str());
    }
    Ok(code)
}

fn resolve_port(port: Option<&Path>) -> crate::Result<PathBuf> {
    match port {
        Some(p) => Ok(p.to_path_buf()),
        None => discover::find_one(),
    }
}

fn print_json<T: serde::Serialize>(v: &T) -> crate::Result<()> {
    render::emit(true, v)
}

fn progress_printer(json: bool) -> impl FnMut(&str, u64, u64) {
    let mut eta = Eta::default();
    move |what: &str, done: u64, total: u64| {
        if let Some(line) = eta.update(what, done, total, std::time::Instant::now()) {
            if !json {
                eprintln!("{line}");
            }
        }
    }
}

/// Progress lines with an estimate of the time left, for one phase
/// (`what`) at a time: at most one line per 10 % or per 10 s.
#[derive(Default)]
struct Eta {
    what: String,
    start: Option<(std::time::Instant, u64)>,
    last_pct: u64,
    last_print: Option<std::time::Instant>,
}

impl Eta {
    fn update(
        &mut self,
        what: &str,
        done: u64,
        total: u64,
        now: std::time::Instant,
    ) -> Option<String> {
        if what != self.what || self.start.is_none() {
            self.what = what.to_string();
            self.start = Some((now, done));
            self.last_pct = 0;
            self.last_print = None;
        }
        let pct = (done.saturating_mul(100)).checked_div(total).unwrap_or(100);
        // A phase's end is said once: the appliance repeats its last frame.
        if pct >= 100 && self.last_pct >= 100 && self.last_print.is_some() {
            return None;
        }
        let due = pct >= self.last_pct + 10
            || done == total
            || self
                .last_print
                .is_none_or(|t| now.duration_since(t).as_secs() >= 10);
        if !due {
            return None;
        }
        self.last_pct = pct;
        self.last_print = Some(now);
        let (t0, d0) = self.start?;
        let secs = now.duration_since(t0).as_secs_f64();
        let eta = match done.saturating_sub(d0) {
            moved if moved > 0 && secs >= 1.0 && done < total => {
                let left = (total - done) as f64 * secs / moved as f64;
                format!(", about {} left", human_secs(left as u64))
            }
            _ => String::new(),
        };
        Some(format!("  {what}: {done}/{total} ({pct}%{eta})"))
    }
}

fn human_secs(s: u64) -> String {
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

/// The PIN guards the appliance: a PIN file others can read is said, not refused (the
/// operator may be mid-journey with no way to fix it there), with how to fix it. Only of a
/// regular file: a directory's mode was warned of before "Is a directory", and a pipe's
/// (`--pin-file <(pass show pin)`) says nothing of who can read the PIN.
fn warn_if_shared(f: &Path) {
    if let Some(mode) = crate::keyfile::exposed_mode(f) {
        eprintln!(
            "mgear: warning: PIN file {} can be read by other users (mode {:04o}): `chmod \
             600 {}`",
            f.display(),
            mode & 0o777,
            f.display()
        );
    }
}

fn read_pin(pin_file: Option<&Path>, confirm: bool) -> crate::Result<Pin> {
    let text = match pin_file {
        Some(f) => {
            // Like a key file: one that cannot be read is a usage error (2). Only its first
            // line is read, and only so far (`/dev/zero` is no PIN file either).
            let cannot = |e: String| {
                usage(format!(
                    "cannot read PIN file {}: {e}; give the file that holds the PIN (on its \
                     first line)",
                    f.display()
                ))
            };
            let raw = crate::keyfile::read_head(f, PIN_FILE_LIMIT).map_err(|e| match e {
                crate::keyfile::Head::TooLong(_) => cannot(format!(
                    "{e} (a PIN has at most {})",
                    mgear_appliance_api::pin::MAX_PIN_LEN
                )),
                e => cannot(e.to_string()),
            })?;
            // Said of a file that reads, not before the error of one that does not.
            warn_if_shared(f);
            let line = raw.split(|&b| b == b'\n').next().unwrap_or_default();
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            Zeroizing::new(
                String::from_utf8(line.to_vec())
                    .map_err(|_| cannot("its first line is not text".into()))?,
            )
        }
        None => {
            let no_tty = |e: std::io::Error| {
                usage(format!(
                    "cannot ask for the PIN: no terminal ({e}); use --pin-file FILE (the PIN on its first line, file mode 0600)"
                ))
            };
            use std::io::IsTerminal;
            // rpassword reads /dev/tty; a script without a terminal on stdin
            // gets the way that works instead of a hang or an OS error.
            if !std::io::stdin().is_terminal() {
                return Err(no_tty(std::io::Error::other("stdin is not a terminal")));
            }
            let a = Zeroizing::new(rpassword::prompt_password("Appliance PIN: ").map_err(no_tty)?);
            if confirm {
                let b = Zeroizing::new(rpassword::prompt_password("Repeat PIN: ").map_err(no_tty)?);
                if *a != *b {
                    return Err(usage("the two PINs differ; nothing was changed"));
                }
            }
            a
        }
    };
    if text.is_empty() {
        return Err(usage(
            "empty PIN: the PIN file's first line (or what was typed) is empty (the PIN is the \
             first line alone: remove any blank line before it); nothing was sent, no attempt \
             used",
        ));
    }
    // A PIN the rules cannot admit was never set: sending it would only use up an attempt
    // (ten wrong ones destroy the key slots before the seal).
    if let Err(rule) = mgear_appliance_api::pin::check_rules(&text) {
        return Err(usage(format!(
            "not a PIN this appliance can have: {rule} (a space or other stray character left in \
             the PIN file counts; its LF or CRLF line ending does not); nothing was sent, no attempt used"
        )));
    }
    Ok(Pin::new(text.as_str()))
}

/// The most of a PIN file read: its first line, which is far shorter.
const PIN_FILE_LIMIT: u64 = 4096;

fn print_info(i: &Info) {
    println!("state:          {}", i.state);
    println!(
        "firmware:       {} (protocol {})",
        i.firmware_version, i.protocol_version
    );
    match &i.identity_pubkey {
        Some(k) => {
            // Always computed here: the full form is what --trust-appliance pins.
            println!("identity:       {}", full_fingerprint(k));
            println!("public key:     {}", hex(k));
        }
        _ => println!("identity:       none (not provisioned)"),
    }
    if let Some(m) = &i.medium_id {
        println!("medium id:      {}", hex(m));
    }
    println!(
        "medium:         {} bytes at {}",
        i.medium_bytes, i.medium_locator
    );
    let c = &i.counters;
    println!(
        "counters:       boots {}, unlocks {}, wrong PINs {} in a row ({} ever), writes {} ({} refused), attestations {}",
        c.boots, c.unlocks, c.failed_pins, c.total_failed_pins, c.writes, c.refused_writes, c.attestations
    );
    // An erased appliance takes no PIN at all: a wait for the next try means nothing there.
    if i.retry_after_ms > 0 && !i.state.as_str().starts_with("eras") {
        println!("next PIN try:   in {} ms", i.retry_after_ms);
    }
    println!(
        "custody log:    {} records{}",
        i.log_records,
        if i.log_damaged {
            " (DAMAGED: run `mgear appliance log --verify`)"
        } else {
            ""
        }
    );
}

pub(crate) fn hex(b: &[u8]) -> String {
    crate::output::hex(b)
}

fn print_report(r: &VerifyReport, port: &Path) {
    println!(
        "{}, {}, {}, {} stored bytes checked",
        crate::units::count(r.captures, "capture"),
        crate::units::count(r.segments, "segment"),
        crate::units::count(r.records, "record"),
        r.bytes
    );
    print_problems(&r.problems, port);
}

/// The firmware's verifier names the commands that mend a problem with a placeholder
/// medium: here it is this appliance's (the literal `--medium MEDIUM` was printed).
fn on_appliance(text: &str, port: &Path) -> String {
    text.replace(
        "--medium MEDIUM",
        &format!("--appliance {}", port.display()),
    )
}

fn print_problems(problems: &[Problem], port: &Path) {
    for p in problems {
        println!("PROBLEM: {}", on_appliance(&p.to_string(), port));
    }
}

/// `req`, a command the appliance carries out on its own medium, sent while this host holds
/// the medium's lock (the one commands writing or reading it through this host hold,
/// [`crate::lock::lock_export`]; `exclusive` for one that changes it): refused at once,
/// naming the holder, while a capture writes it. No lock where the medium is not an export of
/// this host's (a board's USB disk).
fn call_holding(
    c: &mut Client,
    port: &Path,
    exclusive: bool,
    req: &Request,
    json: bool,
) -> crate::Result<Response> {
    let i = info(c)?;
    let _held = match i.medium_locator.parse::<mgear_nbd::NbdUrl>() {
        Ok(url) => lock_medium(&url, port, exclusive)?,
        Err(_) => None,
    };
    c.call_progress(req, &mut progress_printer(json))
}

/// The lock on the medium of the appliance at `port`, exported at `url`: kept in the file
/// beside the export's Unix socket; `None` for an export of another kind.
fn lock_medium(
    url: &mgear_nbd::NbdUrl,
    port: &Path,
    exclusive: bool,
) -> crate::Result<Option<crate::lock::MediumLock>> {
    match url {
        mgear_nbd::NbdUrl::Unix { socket, .. } => crate::lock::lock_export(
            &mgear_nbd::export_lock_path(socket),
            exclusive,
            &format!("the appliance at {}", port.display()),
        ),
        _ => Ok(None),
    }
}

pub(crate) fn info(c: &mut Client) -> crate::Result<Info> {
    match c.call(&Request::Info)? {
        Response::Info(i) => Ok(i),
        other => bail!("unexpected reply to Info: {other:?}"),
    }
}

/// Every custody-log record, page by page.
pub fn fetch_log(c: &mut Client) -> crate::Result<Vec<LogRecord>> {
    let mut all: Vec<LogRecord> = Vec::new();
    loop {
        match c.call(&Request::Log {
            from: all.len() as u64,
        })? {
            Response::LogRecords { records, total, .. } => {
                if records.is_empty() {
                    break;
                }
                all.extend(records);
                if all.len() as u64 >= total {
                    break;
                }
            }
            other => bail!("unexpected reply to Log: {other:?}"),
        }
    }
    Ok(all)
}

fn run_cmd(c: &mut Client, cmd: Cmd, json: bool, port: &Path) -> crate::Result<i32> {
    match cmd {
        Cmd::List => unreachable!("handled before opening a port"),
        Cmd::Info => {
            let i = info(c)?;
            if json {
                // `fingerprint` is the full form a target pins.
                print_json(&i)?;
            } else {
                print_info(&i);
            }
            Ok(0)
        }
        Cmd::Provision { pin_file } => {
            let pin = read_pin(pin_file.as_deref(), true)?;
            match c.call(&Request::Provision { pin })? {
                Response::Provisioned {
                    identity_pubkey,
                    fingerprint,
                } => {
                    if json {
                        print_json(
                            &serde_json::json!({"identity_pubkey": hex(&identity_pubkey), "fingerprint": fingerprint}),
                        )?;
                    } else {
                        // Labelled as `info` labels them: two bare hex strings left the
                        // operator to guess which one a target pins.
                        println!(
                            "provisioned; identity fingerprint {fingerprint} (what a target \
                             pins with --trust-appliance; public key {})",
                            hex(&identity_pubkey)
                        );
                        println!(
                            "the appliance is locked: `mgear appliance unlock` before capturing"
                        );
                    }
                    Ok(0)
                }
                other => bail!("unexpected reply to Provision: {other:?}"),
            }
        }
        Cmd::Unlock { pin_file } => {
            let pin = read_pin(pin_file.as_deref(), false)?;
            // The appliance's reply is the truth: a sealed one refuses (exit 2).
            expect_simple(
                c,
                &Request::Unlock { pin },
                json,
                "unlocked: the medium accepts writes",
            )
        }
        Cmd::Lock => expect_simple(c, &Request::Lock, json, "locked: the medium is read-only"),
        // A capture writing through this host: its generation is unfinished until it ends,
        // which the appliance's verify told as a problem ("resume or --abort" a live capture)
        // and kept in the custody log for good.
        Cmd::Verify => match call_holding(c, port, false, &Request::Verify, json)? {
            // Erased with --overwrite, the medium holds zeros by design: "does not hold a FAT32
            // file system ... `mgear medium format`" sent the operator after a fault there is
            // none of.
            Response::Verified(r)
                if r.problems
                    .iter()
                    .any(|p| p.to_string().contains("does not hold a FAT32 file system"))
                    && info(c).is_ok_and(|i| i.state == DeviceState::Erased) =>
            {
                Err(coded_hint(
                    FOUND,
                    "medium NOT verified: the appliance was erased and its medium overwritten \
                     (`mgear appliance info` says erased): nothing on it can be read any more, \
                     by design",
                    "nothing to do: the erase certificate and the custody log (`mgear appliance \
                     log --verify`) record the erase",
                ))
            }
            Response::Verified(r) => {
                // An empty medium verifies nothing: a failure, as `mgear verify` says of it.
                let empty = r.ok() && r.captures == 0;
                let ok = r.ok() && !empty;
                if json && empty {
                    // Why it is no pass, as the human line says (the object had `ok: false`
                    // and empty `problems`).
                    let mut v = serde_json::to_value(&r)?;
                    crate::output::hex_fields(&mut v, render::BYTE_FIELDS);
                    v["error"] = serde_json::json!({
                        "code": FOUND,
                        "kind": crate::exit::kind(FOUND),
                        "message": "medium NOT verified: it holds no capture",
                        "hint": "capture onto it first: 'mgear capture --appliance PORT ...'",
                    });
                    crate::output::emit_ok(false, &v)?;
                } else if json {
                    render::emit(ok, &r)?;
                } else {
                    print_report(&r, port);
                    println!(
                        "{}",
                        if empty {
                            "medium NOT verified: it holds no capture (capture onto it first: 'mgear capture --appliance PORT ...')"
                        } else if ok {
                            "medium verified"
                        } else {
                            "medium FAILED verification"
                        }
                    );
                }
                Ok(if ok { 0 } else { 1 })
            }
            other => bail!("unexpected reply to Verify: {other:?}"),
        },
        Cmd::Seal => match call_holding(c, port, true, &Request::Seal, json)? {
            Response::Sealed {
                attestation,
                report,
            } => {
                // A member of a span: the others are sealed on their own appliances, and one
                // left unlocked can be written and sealed by whoever carries it.
                let span = image_format::span::SPAN_FILE;
                if attestation.body.files.iter().any(|f| f.path == span) {
                    eprintln!(
                        "mgear: note: this medium is one of a span's media: seal the appliance \
                         of every other medium of the span too before they ship (one left \
                         unlocked can be written and sealed by whoever carries it)"
                    );
                }
                if json {
                    print_json(&serde_json::json!({"attestation": attestation, "report": report}))?;
                } else {
                    print_report(&report, port);
                    println!(
                        "sealed: the medium is read-only; seal attestation {} (counter {})",
                        hex(&attestation.digest()),
                        attestation.body.counter
                    );
                }
                Ok(0)
            }
            other => bail!("unexpected reply to Seal: {other:?}"),
        },
        Cmd::Arrival => {
            let mut challenge = [0u8; 32];
            getrandom::getrandom(&mut challenge).context("drawing the arrival challenge")?;
            let reply =
                c.call_progress(&Request::Arrival { challenge }, &mut progress_printer(json))?;
            let Response::Arrival {
                attestation,
                problems,
            } = reply
            else {
                bail!("unexpected reply to Arrival: {reply:?}");
            };
            if let Some(a) = &attestation {
                if a.body.challenge != Some(challenge) {
                    let msg = format!(
                        "the arrival attestation does not answer this host's challenge (sent {}, signed {}): it is a replayed or forged reply; do not ingest on its strength",
                        hex(&challenge),
                        a.body.challenge.map(|c| hex(&c)).unwrap_or_else(|| "none".into())
                    );
                    return Err(coded_hint(
                        FOUND,
                        msg,
                        "run `mgear appliance arrival` again on this host; if it repeats, the console is not talking to the real appliance",
                    ));
                }
            }
            let passed = attestation.is_some() && problems.is_empty();
            // The medium checked out; the appliance's own record of what happened to it in
            // transit is checked too (a damaged or cut custody log passed unsaid, and the
            // shipment was ingested on the arrival alone).
            let log_failed = match passed {
                true => {
                    let records = fetch_log(c)?;
                    verify_custody(c, &records, None)?.err()
                }
                false => None,
            };
            if json {
                let mut v = serde_json::json!({"attestation": attestation, "problems": problems, "challenge": hex(&challenge), "custody_log_failed": log_failed});
                // A failure carries its `error`, as every failed command's JSON does.
                if let Some(why) = &log_failed {
                    v["error"] = crate::output::error_value(
                        crate::exit::FOUND,
                        &format!("custody log FAILED verification: {why}"),
                        "the medium is as sealed, but what happened to the appliance since \
                         cannot be told from its log: keep `mgear appliance log` with the \
                         shipment's records and ask the capture site before ingesting",
                    );
                } else if !passed {
                    v["error"] = crate::output::error_value(
                        crate::exit::FOUND,
                        "arrival check FAILED: the medium changed since the seal",
                        "do not ingest from it; ask the capture site for another copy",
                    );
                }
                render::emit(passed && log_failed.is_none(), &v)?;
            } else {
                print_problems(&problems, port);
                match &attestation {
                    Some(a) if problems.is_empty() => {
                        println!(
                            "arrival check passed; arrival attestation {} (challenge {})",
                            hex(&a.digest()),
                            hex(&challenge)
                        )
                    }
                    _ => println!("arrival check FAILED: the medium changed since the seal; the appliance withdrew any earlier arrival pass"),
                }
                if let Some(why) = &log_failed {
                    println!(
                        "custody log FAILED verification: {why}: the medium is as sealed, but \
                         what happened to the appliance since cannot be told from its log; keep \
                         `mgear appliance --port {} log` with the shipment's records and ask the \
                         capture site before ingesting",
                        port.display()
                    );
                }
            }
            Ok(if passed && log_failed.is_none() { 0 } else { 1 })
        }
        Cmd::Attestations { out } => match c.call(&Request::GetAttestations)? {
            Response::Attestations { seal, arrival } => {
                if let Some(dir) = out {
                    // A file there (a key, a report) was "File exists (os error 17)", exit 3.
                    if std::fs::symlink_metadata(&dir).is_ok_and(|m| !m.is_dir()) {
                        return Err(usage(format!(
                            "--out {}: it exists and is not a directory: --out takes a \
                             directory (made if missing) that SEAL and ARRIVAL are written \
                             into; give another path",
                            dir.display()
                        )));
                    }
                    // Nothing to export: an empty directory and exit 0, and the ingest given
                    // it failed on "cannot open att/SEAL".
                    // Erased before a seal, it never will be: "seal it" was no way on.
                    if seal.is_none() && info(c).is_ok_and(|i| i.state == DeviceState::Erased) {
                        return Err(usage(format!(
                            "the appliance holds no attestation: it was erased before it was \
                             sealed, and an erased appliance is never sealed; nothing was \
                             exported to {}. Its custody log (`mgear appliance log --verify`) \
                             tells what happened to it",
                            dir.display()
                        )));
                    }
                    if seal.is_none() {
                        return Err(usage(format!(
                            "the appliance holds no attestation (it has not been sealed): \
                             nothing was exported to {}; seal it at the source (`mgear appliance \
                             seal`), check it at the target (`mgear appliance arrival`), then \
                             export",
                            dir.display()
                        )));
                    }
                    std::fs::create_dir_all(&dir)
                        .with_context(|| format!("creating {}", dir.display()))?;
                    for (name, att) in [(gate::SEAL_FILE, &seal), (gate::ARRIVAL_FILE, &arrival)] {
                        if let Some(a) = att {
                            let p = dir.join(name);
                            std::fs::write(&p, gate::encode_attestation(a))
                                .with_context(|| format!("writing {}", p.display()))?;
                        }
                    }
                }
                if json {
                    print_json(&serde_json::json!({"seal": seal, "arrival": arrival}))?;
                } else {
                    for (name, att) in [("seal", &seal), ("arrival", &arrival)] {
                        match att {
                            Some(a) => render::attestation_lines(name, a)
                                .iter()
                                .for_each(|l| println!("{l}")),
                            None => println!("{name} attestation: none"),
                        }
                    }
                }
                Ok(0)
            }
            other => bail!("unexpected reply to GetAttestations: {other:?}"),
        },
        Cmd::Log {
            verify,
            trust_appliance,
        } => {
            let records = fetch_log(c)?;
            let entries = if verify {
                match verify_custody(c, &records, trust_appliance.as_deref())? {
                    Ok(e) => e,
                    Err(why) => {
                        if json {
                            let msg = format!("custody log FAILED verification: {why}");
                            println!(
                                "{}",
                                crate::output::error_line(
                                    FOUND,
                                    &msg,
                                    "do not trust this appliance's history; keep it and report the shipment"
                                )
                            );
                        } else {
                            println!("custody log FAILED verification: {why}");
                            // The next step, as --json carries it (text mode said only that).
                            eprintln!(
                                "mgear: what to do: do not trust this appliance's history; keep \
                                 it and report the shipment"
                            );
                        }
                        return Ok(1);
                    }
                }
            } else {
                records
                    .iter()
                    .filter_map(|r| r.decode().ok().map(|s| s.entry))
                    .collect()
            };
            if json {
                print_json(
                    &serde_json::json!({"verified": verify, "records": records.len(), "entries": entries}),
                )?;
            } else {
                for e in &entries {
                    println!("{}", render::log_line(e));
                }
                if verify {
                    println!(
                        "custody log verified: {} records, hash chain and signatures intact, every attested record present",
                        records.len()
                    );
                } else {
                    println!(
                        "({} records as the appliance gave them, NOT verified: `mgear appliance \
                         log --verify --trust-appliance FINGERPRINT` checks the hash chain, the \
                         signatures and that no record was cut)",
                        records.len()
                    );
                }
            }
            Ok(0)
        }
        Cmd::Erase {
            overwrite,
            pin_file,
            yes,
            certificate,
        } => {
            if !yes {
                return Err(usage("erase destroys the key slots on the medium (the capture can no longer be decrypted, even with target.key) and the appliance identity for good; add --yes to confirm"));
            }
            // Before erasing: an erase cannot be re-run for its certificate.
            if let Some(p) = &certificate {
                crate::report::check_writable(p, "--certificate", "erase-certificate")?;
            }
            // An unlocked appliance already has the PIN; a sealed one never
            // unlocks, so the PIN travels with the request.
            // The medium id is gone after the erase: the certificate names it from here.
            let before = info(c)?;
            // A medium of a span: the key slots are mirrored on every medium of it, and the
            // capture decrypts until each is erased (the certificate said "no longer
            // decrypts" of one of two, and the other, with the first's segments, still did).
            let span = span_of(c, port);
            // Erased already (an erase whose answer a power cut or a pulled cable lost, which
            // says to run the command again): the certificate is made from its custody
            // record, as after any erase; there is nothing to erase again.
            // With or without --certificate: the re-run the cut erase asked for exited 2
            // ("the appliance is erased") without one.
            if before.state == DeviceState::Erased {
                let (cert, verified) = erase_certificate(c, before.medium_id, span)?;
                if let Some(path) = &certificate {
                    crate::report::write_json_and_text(
                        path,
                        &cert,
                        &render::certificate_text(&cert),
                    )?;
                }
                let index = cert["erase_record"]["index"].as_u64();
                if cert["medium"]["key_slots_left"] == true {
                    return Err(coded_hint(
                        FOUND,
                        format!(
                            "the appliance erased itself after too many wrong PINs once sealed \
                             (custody record {}): its identity and PIN are destroyed, but its \
                             sealed medium was left as shipped, key slots included, so the \
                             capture still decrypts with target.key. Nothing was erased now: \
                             a sealed appliance never writes its medium again, and none is left \
                             to ask for a PIN{}",
                            index.map_or("?".into(), |i| i.to_string()),
                            certificate.as_ref().map_or(String::new(), |p| format!(
                                " (certificate {} says so)",
                                p.display()
                            ))
                        ),
                        "destroy the medium itself once every ingest from it has completed (the \
                         datacenter's media destruction, or a wipe of the medium taken out of \
                         the appliance), and `mgear keys forget` the capture's data key at the \
                         capture host",
                    ));
                }
                if !verified {
                    return Err(coded(
                        FOUND,
                        "the appliance is erased, but its custody record of the erase does not \
                         verify under its identity (`mgear appliance log --verify` says more)",
                    ));
                }
                let shown = certificate.as_ref().map(|p| p.display().to_string());
                if json {
                    print_json(&serde_json::json!({
                        "already_erased": true,
                        "erase_record": index,
                        "certificate": shown,
                    }))?;
                } else {
                    println!(
                        "the appliance was erased already (custody record {}): nothing erased again",
                        index.map_or("?".into(), |i| i.to_string()),
                    );
                    if let Some(p) = shown {
                        println!("erase certificate: {p}");
                    }
                }
                return Ok(0);
            }
            let pin = match (pin_file, before.state) {
                (Some(f), _) => Some(read_pin(Some(&f), false)?),
                (None, DeviceState::Unlocked) => None,
                (None, _) => Some(read_pin(None, false)?),
            };
            match c.call_progress(
                &Request::Erase { overwrite, pin },
                &mut progress_printer(json),
            )? {
                Response::Erased {
                    key_slots,
                    medium_overwritten,
                } => {
                    let mut written = None;
                    if let Some(path) = certificate {
                        let (cert, verified) = erase_certificate(c, before.medium_id, span)?;
                        written = Some((
                            path.display().to_string(),
                            cert["erase_record"]["index"].as_u64(),
                        ));
                        crate::report::write_json_and_text(
                            &path,
                            &cert,
                            &render::certificate_text(&cert),
                        )?;
                        if !json {
                            println!("erase certificate: {}", path.display());
                        }
                        if !verified {
                            return Err(coded(
                                FOUND,
                                format!(
                                    "the appliance erased, but its custody record of the erase does not verify under its identity (certificate {} says so)",
                                    path.display()
                                ),
                            ));
                        }
                    }
                    if json {
                        let mut out = serde_json::json!({"key_slots": key_slots, "medium_overwritten": medium_overwritten});
                        // As the re-run on an erased appliance says them.
                        if let Some((path, index)) = written {
                            out["certificate"] = path.into();
                            out["erase_record"] = index.into();
                        }
                        print_json(&out)?;
                    } else {
                        println!(
                            "crypto-erased: {key_slots} key slot file(s) destroyed{}",
                            if medium_overwritten {
                                ", medium overwritten"
                            } else {
                                ""
                            }
                        );
                        if let Some((ordinal, media)) = span.filter(|(_, n)| *n > 1) {
                            println!(
                                "note: this medium is #{ordinal} of a span of {media} media, and \
                                 the capture's key slots are mirrored on every one of them: it \
                                 no longer decrypts only once each medium of the span is erased \
                                 (or destroyed)"
                            );
                        }
                    }
                    Ok(0)
                }
                other => bail!("unexpected reply to Erase: {other:?}"),
            }
        }
    }
}

fn expect_simple(c: &mut Client, req: &Request, json: bool, text: &str) -> crate::Result<i32> {
    let r = c.call(req)?;
    if !matches!(r, Response::Unlocked | Response::Locked) {
        bail!("unexpected reply: {r:?}");
    }
    if json {
        print_json(&r)?;
    } else {
        println!("{text}");
    }
    Ok(0)
}

/// The erase certificate, from what the appliance says after an erase: its
/// identity (kept after erase so its log stays verifiable), medium, and the
/// custody record of the erase with the log's chain and signatures checked
/// here. The protocol has no "sign this certificate" request, so the
/// appliance's signature is the one on that custody record. Returns the
/// certificate and whether the record verified.
/// The place of the appliance's medium in a span (its ordinal, how many media the span has),
/// read from its export; `None` for a medium of its own or one that does not read.
fn span_of(c: &mut Client, port: &Path) -> Option<(u16, usize)> {
    let (mut store, _lock) = open_medium_with(c, port, false).ok()?;
    let info = image_format::span::read_span(store.as_mut())
        .ok()
        .flatten()?;
    Some((info.label?.ordinal, info.map.members.len()))
}

fn erase_certificate(
    c: &mut Client,
    medium_id: Option<[u8; 16]>,
    span: Option<(u16, usize)>,
) -> crate::Result<(serde_json::Value, bool)> {
    let i = info(c)?;
    let records = fetch_log(c)?;
    let key = i.identity_pubkey;
    let verified = key.map(|k| verify_log(&records, &k));
    let last_erase = records.iter().rev().find_map(|r| {
        let s = r.decode().ok()?;
        matches!(s.entry.event, Event::Erase { .. }).then_some((r, s))
    });
    let record = last_erase.as_ref().map(|(r, s)| {
        use sha2::Digest;
        serde_json::json!({
            "index": s.entry.index,
            "time": s.entry.unix_time.map(crate::output::iso_time),
            "uptime_ms": s.entry.uptime_ms,
            "event": render::event_text(&s.entry.event),
            "body": hex(&r.body),
            "body_sha256": hex(&sha2::Sha256::digest(&r.body)),
            "signature": hex(&s.signature),
        })
    });
    // A lockout once sealed wipes only the appliance's secrets: the shipment, key slots
    // included, stays as sealed (README, "What destroys what"), and still decrypts with the
    // target's key. Said, where an erase certificate would read as the capture destroyed.
    let slots_left = last_erase.as_ref().is_some_and(|(_, s)| {
        matches!(
            s.entry.event,
            Event::Erase {
                reason: mgear_appliance_api::custody::EraseReason::PinLockout,
                key_slots: 0,
                ..
            }
        ) && records.iter().any(|r| {
            r.decode().is_ok_and(|d| {
                d.entry.index < s.entry.index && matches!(d.entry.event, Event::Seal { .. })
            })
        })
    });
    // An erased appliance no longer says its medium id (it went with the identity): its
    // seal or arrival attestation, signed by that identity, still does.
    let attested = match (i.medium_id.or(medium_id), key) {
        (None, Some(k)) => match c.call(&Request::GetAttestations)? {
            Response::Attestations { seal, arrival } => [arrival, seal]
                .into_iter()
                .flatten()
                .find(|a| verify_attestation(a, &k).is_ok())
                .map(|a| a.body.medium_id),
            _ => None,
        },
        _ => None,
    };
    let ok = matches!(verified, Some(Ok(_))) && record.is_some();
    let verdict = match (&verified, &record) {
        (Some(Ok(_)), Some(_)) => "verified: the erase record is signed by the appliance identity and chained to the whole custody log".to_string(),
        (Some(Ok(_)), None) => "NOT verified: the custody log holds no erase record".to_string(),
        (Some(Err(e)), _) => format!("NOT verified: {e}"),
        (None, _) => "NOT verified: the appliance reports no identity".to_string(),
    };
    let cert = serde_json::json!({
        "certificate": "mgear-erase-certificate/1",
        "issued": crate::output::now_iso(),
        "host": std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default(),
        "appliance": {
            "identity_pubkey": key.map(|k| hex(&k)),
            "fingerprint": key.map(|k| full_fingerprint(&k)),
            "firmware_version": i.firmware_version,
            "state": i.state.as_str(),
        },
        "medium": {
            "id": i.medium_id.or(medium_id).or(attested).map(|m| hex(&m)),
            "bytes": i.medium_bytes,
            "key_slots_left": slots_left,
            // This medium's place in a span: its key slots are mirrored on the others.
            "span": span.map(|(ordinal, media)| serde_json::json!({
                "ordinal": ordinal,
                "media": media,
            })),
        },
        "custody_log_records": records.len(),
        "erase_record": record,
        "verified": ok,
        "verdict": verdict,
    });
    Ok((cert, ok))
}

/// `log --verify`: the identity to check against (the pinned one if given,
/// else the device's), then chain and signatures, then that the log still
/// covers every stored attestation. `Ok(Err(why))` is a failed check.
pub(crate) fn verify_custody(
    c: &mut Client,
    records: &[LogRecord],
    pinned: Option<&str>,
) -> crate::Result<Result<Vec<mgear_appliance_api::custody::LogEntry>, String>> {
    let i = info(c)?;
    let reported = i.identity_pubkey;
    let key = match pinned {
        Some(fp) => {
            let want = crate::sitekey::parse_fingerprint(fp)?;
            // The first record names the identity the log was started by;
            // the signatures below prove that key signed it.
            let logged =
                records
                    .first()
                    .and_then(|r| r.decode().ok())
                    .and_then(|s| match s.entry.event {
                        Event::Provisioned { identity } => Some(identity),
                        _ => None,
                    });
            let Some(key) = logged.or(reported) else {
                return Ok(Err(
                    "the log names no identity and the appliance reports none".into(),
                ));
            };
            if want == key {
                // `info` prints the public key beside the fingerprint: an easy mix-up, the
                // operator's (exit 2), not a history to distrust.
                return Err(crate::exit::usage(format!(
                    "{} is this appliance's public key, not its fingerprint: pin the fingerprint \
                     {} (`mgear appliance info` prints both)",
                    hex(&want),
                    full_fingerprint(&key)
                )));
            }
            if !crate::sitekey::matches(&key, &want) {
                return Ok(Err(format!(
                    "this is not the pinned appliance: expected identity {}, the log was started by {}",
                    hex(&want),
                    full_fingerprint(&key)
                )));
            }
            if reported.is_some_and(|r| r != key) {
                return Ok(Err(format!(
                    "the appliance reports identity {}, but its log was started by the pinned {}",
                    full_fingerprint(&reported.unwrap_or_default()),
                    full_fingerprint(&key)
                )));
            }
            key
        }
        None => reported.ok_or_else(|| {
            crate::exit::coded_next(
                crate::exit::USAGE,
                "the appliance is not provisioned: it has no identity and no custody log to verify",
                "provision it first ('mgear appliance provision')",
            )
        })?,
    };
    let entries = match verify_log(records, &key) {
        Ok(e) => e,
        Err(e) => return Ok(Err(e.to_string())),
    };
    if let Some(why) = missing_start(&entries, &key)
        .or_else(|| missing_power_ups(&entries, i.counters.boots))
        .or_else(|| missing_events(&entries, &i))
    {
        return Ok(Err(why));
    }
    let (seal, arrival) = match c.call(&Request::GetAttestations)? {
        Response::Attestations { seal, arrival } => (seal, arrival),
        other => bail!("unexpected reply to GetAttestations: {other:?}"),
    };
    for att in [seal, arrival].iter().flatten() {
        if let Err(e) = check_attested_log(att, records, &key) {
            return Ok(Err(e));
        }
    }
    Ok(Ok(entries))
}

/// A log that does not start with the provisioning of the identity it is checked against:
/// the firmware logs it before the provisioning takes effect, so a provisioned appliance
/// always has it. Without it, the log's start was cut, or the whole log deleted (and the
/// counters that tell its records zeroed with it: it verified as "1 records", a lone
/// `power-up #1`).
fn missing_start(
    entries: &[mgear_appliance_api::custody::LogEntry],
    key: &[u8; 32],
) -> Option<String> {
    let first = match entries.first() {
        Some(e) if matches!(e.event, Event::Provisioned { identity } if identity == *key) => {
            return None
        }
        Some(e) => format!("starts with \"{}\"", e.event),
        None => "is empty".to_string(),
    };
    Some(format!(
        "the appliance is provisioned (identity {}), but its custody log {first}, not with its \
         provisioning: the log was deleted or its start cut from it, and what the appliance \
         counts was reset with it",
        full_fingerprint(key)
    ))
}

/// Records cut from the log, told by its power-ups: every boot after the one that
/// provisioned the appliance (boot 1, logged as `provisioned`) counts itself and then logs
/// `power-up #N`. A number skipped with no `torn tail dropped` between (a power cut that tore
/// that boot's record) or a last one below the appliance's count means records were removed
/// (a chain checks only the records that are there).
fn missing_power_ups(
    entries: &[mgear_appliance_api::custody::LogEntry],
    boots: u64,
) -> Option<String> {
    let mut last = 1u64;
    let mut torn = false;
    let mut provisioned = false;
    for e in entries {
        match e.event {
            Event::Provisioned { .. } => provisioned = true,
            Event::TornTailDropped { .. } => torn = true,
            Event::PowerUp { boot } => {
                if boot > last + 1 && !torn {
                    // Named only if the log holds it: "from provisioning (boot 1)" was said
                    // of a log that had none.
                    let from = match last {
                        1 if provisioned => "provisioning (boot 1)".to_string(),
                        1 => {
                            "its first record, with no provisioning (boot 1) before it,".to_string()
                        }
                        n => format!("power-up #{n}"),
                    };
                    return Some(format!(
                        "the log goes from {from} to power-up #{boot}: the records of the boots \
                         between were cut from it"
                    ));
                }
                last = boot;
                torn = false;
            }
            _ => {}
        }
    }
    (boots > last).then(|| {
        format!(
            "the log's last power-up is #{last} but the appliance counted {boots} boots: records \
             were cut from the end of the log"
        )
    })
}

/// Records cut from the log, told by what the appliance counts and by its state: every wrong
/// PIN it counted ever has a `wrong PIN` or `PIN check cut off` record (the check stays marked
/// under way until its record is logged), and an erased appliance logged its erase before it
/// destroyed anything. Records cut after the last power-up (a finder's guesses, the erase)
/// left the chain and the power-ups whole.
fn missing_events(
    entries: &[mgear_appliance_api::custody::LogEntry],
    i: &mgear_appliance_api::protocol::Info,
) -> Option<String> {
    let logged = entries
        .iter()
        .filter(|e| {
            matches!(
                e.event,
                Event::WrongPin { .. } | Event::PinCheckCutOff { .. }
            )
        })
        .count() as u64;
    if logged < i.counters.total_failed_pins {
        return Some(format!(
            "the appliance counted {} wrong PIN(s) ever, but its log records {logged}: records \
             were cut from the log",
            i.counters.total_failed_pins
        ));
    }
    // Each unlock is logged before it is counted (a cut between leaves the record, not the
    // count), so the count never exceeds the records.
    let unlocks = entries
        .iter()
        .filter(|e| matches!(e.event, Event::Unlock))
        .count() as u64;
    if unlocks < i.counters.unlocks {
        return Some(format!(
            "the appliance counted {} unlock(s), but its log records {unlocks}: records were \
             cut from the log",
            i.counters.unlocks
        ));
    }
    let erased = entries
        .iter()
        .any(|e| matches!(e.event, Event::Erase { .. }));
    if i.state == mgear_appliance_api::protocol::DeviceState::Erased && !erased {
        return Some(
            "the appliance is erased, but its log holds no erase record: records were cut from \
             the log"
                .into(),
        );
    }
    None
}

fn check_attested_log(
    att: &Attestation,
    records: &[LogRecord],
    key: &[u8; 32],
) -> Result<(), String> {
    verify_attestation(att, key).map_err(|e| {
        format!(
            "stored {} attestation: {e}",
            crate::output::serde_name(&att.body.kind).to_lowercase()
        )
    })?;
    check_log_covers(att, records).map_err(|e| e.to_string())
}

/// The appliance's medium, reached through its block service: asks `info`
/// for the locator (the simulator's `nbd+unix://` socket), connects with
/// `mgear_nbd::NbdFile` and opens the FAT32 volume.
/// Where the appliance at `port` exports its medium (its `medium_locator`): the NBD URL of
/// the simulator's export, or a board's description.
pub fn medium_locator(port: &Path) -> crate::Result<String> {
    let mut c = Client::open(port)?;
    Ok(info(&mut c)?.medium_locator)
}

pub fn open_medium(
    port: &Path,
    exclusive: bool,
) -> crate::Result<(Box<dyn Store>, Option<crate::lock::MediumLock>)> {
    let mut c = Client::open(port)?;
    open_medium_with(&mut c, port, exclusive)
}

/// [`open_medium`] through the console client `c` already open on `port` (a second client
/// on the console is refused while the first holds it).
fn open_medium_with(
    c: &mut Client,
    port: &Path,
    exclusive: bool,
) -> crate::Result<(Box<dyn Store>, Option<crate::lock::MediumLock>)> {
    let i = info(c)?;
    let url: mgear_nbd::NbdUrl = i.medium_locator.parse().map_err(|e| {
        err!(
            "the appliance's medium is at {:?}, which this host cannot reach as NBD ({e}); \
             on a board the medium is a USB mass-storage device: use --medium fat:/dev/sdX",
            i.medium_locator
        )
    })?;
    // Taken before the FAT is read, like an image's lock (`crate::lock`).
    let lock = lock_medium(&url, port, exclusive)?;
    let client = mgear_nbd::Client::connect(&url, &mgear_nbd::ConnectOptions::default())
        .with_context(|| format!("connecting to the appliance's medium at {url}"))?;
    let file = nbd_device::NbdDevice::new(mgear_nbd::NbdFile::new(client))
        .with_context(|| format!("connecting to the appliance's medium at {url}"))?;
    // A reader mounts read-only: it writes nothing, the clean flag at unmount included (a
    // locked appliance's export refused that write, and every ingest or verify from it
    // ended with a warning).
    let opened = if exclusive {
        FatStore::open(file)
    } else {
        FatStore::open_read_only(file)
    };
    let store = opened.map_err(|e| {
        // The store's own advice (`mgear medium format fat:PATH`) cannot reach a medium behind
        // an appliance: the medium is formatted where the appliance is issued.
        let e = e.to_string();
        match e.split_once("; check that the path names the medium") {
            // Erased with --overwrite, the medium holds zeros by design: "format it" and
            // "reconnect it" sent the operator after a fault there is none of.
            Some(_) if i.state == DeviceState::Erased => crate::exit::coded_hint(
                crate::exit::FOUND,
                "the appliance was erased and its medium overwritten (`mgear appliance info` \
                 says erased): nothing on it can be read any more, by design; the erase \
                 certificate and the custody log (`mgear appliance log --verify`) record it",
                // The generic "the data did not check out: do not use it" read as a fault.
                "nothing is wrong with the appliance: keep the erase certificate with the \
                 shipment's records; the disks are ingested from another copy, or captured \
                 again",
            ),
            Some((what, _)) => err!(
                "opening the appliance's medium: {what}. An appliance's medium is formatted \
                 where the appliance is issued, before it is provisioned (the simulator: stop \
                 it, `mgear medium format fat:IMAGE` of its --medium image, start it again)"
            ),
            None => err!("opening the appliance's medium: {e}"),
        }
    })?;
    crate::output::say_put_right(
        &format!("the medium of the appliance at {}", port.display()),
        &store,
    );
    Ok((Box::new(ApplianceMedium(Some(store))), lock))
}

type NbdFat = FatStore<nbd_device::NbdDevice>;

/// The appliance's FAT volume, unmounted when dropped.
///
/// Callers hold it as `Box<dyn Store>` and cannot call `FatStore::unmount`;
/// without it the volume's dirty bit would stay set. Data and metadata are
/// durable after `sync` (which callers check); only the final clean-flag
/// write happens here, and a failure of it is reported on stderr.
struct ApplianceMedium(Option<NbdFat>);

impl ApplianceMedium {
    fn s(&mut self) -> Result<&mut NbdFat, image_format::StoreError> {
        self.0
            .as_mut()
            .ok_or_else(|| image_format::StoreError::Io("the appliance medium is closed".into()))
    }
}

impl Drop for ApplianceMedium {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            if let Err(e) = s.unmount() {
                eprintln!("mgear: warning: unmounting the appliance's medium: {e}");
            }
        }
    }
}

impl Store for ApplianceMedium {
    fn list(
        &mut self,
        dir: &str,
    ) -> Result<Vec<image_format::store::Entry>, image_format::StoreError> {
        self.s()?.list(dir)
    }
    fn len(&mut self, path: &str) -> Result<Option<u64>, image_format::StoreError> {
        self.s()?.len(path)
    }
    fn read_at(
        &mut self,
        path: &str,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize, image_format::StoreError> {
        self.s()?.read_at(path, offset, buf)
    }
    fn write_at(
        &mut self,
        path: &str,
        offset: u64,
        data: &[u8],
    ) -> Result<(), image_format::StoreError> {
        self.s()?.write_at(path, offset, data)
    }
    fn set_len(&mut self, path: &str, len: u64) -> Result<(), image_format::StoreError> {
        self.s()?.set_len(path, len)
    }
    fn create_dir_all(&mut self, path: &str) -> Result<(), image_format::StoreError> {
        self.s()?.create_dir_all(path)
    }
    fn rename(&mut self, from: &str, to: &str) -> Result<(), image_format::StoreError> {
        self.s()?.rename(from, to)
    }
    fn remove_file(&mut self, path: &str) -> Result<(), image_format::StoreError> {
        self.s()?.remove_file(path)
    }
    fn sync(&mut self, path: &str) -> Result<(), image_format::StoreError> {
        self.s()?.sync(path)
    }
    fn free_space(&mut self) -> Result<Option<u64>, image_format::StoreError> {
        self.s()?.free_space()
    }
    fn free_space_resuming(&mut self, name: &str) -> Result<Option<u64>, image_format::StoreError> {
        self.s()?.free_space_resuming(name)
    }
    fn used_space(&mut self) -> Result<Option<u64>, image_format::StoreError> {
        self.s()?.used_space()
    }
    fn file_system_findings(&mut self) -> Result<Vec<String>, image_format::StoreError> {
        self.s()?.file_system_findings()
    }
    fn chain_findings(&mut self) -> Result<Vec<String>, image_format::StoreError> {
        self.s()?.chain_findings()
    }
    fn lost_dirs(&mut self, under: &str) -> Result<Vec<Vec<String>>, image_format::StoreError> {
        self.s()?.lost_dirs(under)
    }
    fn lost_clusters(&mut self) -> Result<Option<String>, image_format::StoreError> {
        self.s()?.lost_clusters()
    }
    fn left_mid_write(&self) -> bool {
        self.0.as_ref().is_some_and(|s| s.left_mid_write())
    }
    fn damaged_hints(&self) -> Option<String> {
        self.0.as_ref().and_then(|s| s.damaged_hints())
    }
    /// The appliance owns the volume (it is not unmounted from here): syncing flushes its data
    /// and metadata.
    fn close(mut self: Box<Self>) -> Result<(), image_format::StoreError> {
        self.sync("")
    }
}

/// The appliance's Ed25519 public key (recorded in the manifest at capture).
pub fn appliance_identity(port: &Path) -> crate::Result<[u8; 32]> {
    let mut c = Client::open(port)?;
    info(&mut c)?.identity_pubkey.ok_or_else(|| {
        err!(
            "the appliance at {} is not provisioned: run `mgear appliance provision`",
            port.display()
        )
    })
}

/// The appliance at `port` takes `what` (a capture, a removal, a repair: anything that
/// writes its medium) only when unlocked: said before the medium is opened, with the
/// next step, not as the export's "read-only" I/O error part-way.
pub fn ready_to_change(port: &Path, what: &str) -> crate::Result<()> {
    let mut c = Client::open(port)?;
    let state = info(&mut c)?.state;
    if state != DeviceState::Unlocked {
        // A sealed (arrived, erased) appliance is read-only for good: "only when unlocked"
        // read as if unlocking it were a way on.
        let why = match state {
            DeviceState::Sealed | DeviceState::Arrived | DeviceState::Erased => {
                format!("its medium is read-only for good, so {what} is refused")
            }
            _ => format!("it takes {what} only when unlocked"),
        };
        return Err(usage(format!(
            "the appliance at {} is {}: {why}; next: {}",
            port.display(),
            state.as_str(),
            next_step(state)
        )));
    }
    Ok(())
}

/// What cut off a capture that writes through the appliance at `port`, asked of the
/// appliance after the fact: the medium's error alone ("read-only", "Broken pipe") did not
/// say that the appliance was locked meanwhile or went away, nor that the same command
/// resumes. The error keeps its exit code; the message gains the cause and the next step.
pub fn explain_cut_off(port: &Path, identity: Option<&[u8; 32]>, e: crate::Error) -> crate::Error {
    let resume = "the capture resumes from its last checkpoint when the same command is run again";
    // Another device may answer at the path now (a console whose pty number was given to
    // another appliance, another unit plugged in): only the one the capture wrote through
    // says anything about it.
    let ours = |i: &Info| identity.is_none_or(|id| i.identity_pubkey.as_ref() == Some(id));
    let (why, next) = match Client::open(port).and_then(|mut c| info(&mut c)) {
        Ok(i) if ours(&i) && i.state == DeviceState::Unlocked => return e,
        // Erased: nothing is resumed on it, ever (the key slots are gone, the medium is
        // read-only for good); "resumes from its last checkpoint" sent the operator back.
        Ok(i) if ours(&i) && i.state == DeviceState::Erased => (
            format!(
                "the appliance at {} was erased while the capture wrote: its key slots are \
                 gone and its medium is read-only for good",
                port.display()
            ),
            format!(
                "{}; capture the disk again onto another appliance or medium (nothing of this \
                 capture can be resumed or read)",
                next_step(i.state)
            ),
        ),
        Ok(i) if ours(&i) => (
            format!(
                "the appliance at {} is {} now (it was locked, sealed or erased while the \
                 capture wrote)",
                port.display(),
                i.state.as_str(),
            ),
            format!("{}; then {resume}", next_step(i.state)),
        ),
        _ => (
            format!(
                "the appliance at {} does not answer any more (unplugged, powered off, or its \
                 simulator stopped)",
                port.display()
            ),
            format!("connect it again and unlock it; {resume}"),
        ),
    };
    // The next step is the appliance's: the medium's own error read "refuses writes
    // (mounted read-only, write-protected...): make it writable" beside "unlock it".
    crate::exit::coded_next(crate::exit::code_of(&e), format!("{why} ({e:#})"), next)
}

/// Record in the appliance's custody log that capture `name` starts writing.
pub fn capture_begin(port: &Path, name: &str) -> crate::Result<()> {
    let mut c = Client::open(port)?;
    let req = Request::CaptureBegin {
        name: name.to_string(),
    };
    // A refusal (its state changed since `ready_to_change`) is the
    // operator's to act on, as every appliance refusal is: exit 2.
    let reply = c.call(&req).map_err(|e| match e.find::<ApplianceError>() {
        Some(ae) => usage(ae.to_string()),
        None => e,
    })?;
    match reply {
        Response::Recorded { .. } => Ok(()),
        other => bail!("unexpected reply to a capture event: {other:?}"),
    }
}

/// Record in the appliance's custody log that `generations` of capture `name` were removed
/// from its medium (`medium rm`, `capture --abort` through it).
pub fn capture_removed(port: &Path, name: &str, generations: &[u32]) -> crate::Result<()> {
    let mut c = Client::open(port)?;
    let req = Request::CaptureRemoved {
        name: name.to_string(),
        generations: generations.iter().map(|g| u64::from(*g)).collect(),
    };
    match c.call(&req)? {
        Response::Recorded { .. } => Ok(()),
        other => bail!("unexpected reply to a removal event: {other:?}"),
    }
}

/// Ask the appliance to witness finished generation `generation` of `name`
/// (the host must have closed the medium: the appliance reads MANIFEST and
/// key slots itself). Returns its role-appliance signature over the commit,
/// not yet checked: the caller verifies it against the commit it computes
/// and the identity it pinned from `info`.
pub fn witness_commit(
    port: &Path,
    name: &str,
    generation: u32,
) -> crate::Result<image_format::commit::CommitSignature> {
    let mut c = Client::open(port)?;
    let req = Request::CaptureCommit {
        name: name.to_string(),
        generation: u64::from(generation),
    };
    match c.call(&req)? {
        Response::Witnessed {
            identity_pubkey,
            signature,
            ..
        } => Ok(image_format::commit::CommitSignature {
            role: image_format::commit::SignerRole::Appliance,
            public_key: identity_pubkey,
            signature,
        }),
        Response::Recorded { .. } => bail!(
            "the appliance at {} recorded the commit but did not sign it: its firmware predates \
             commit witnessing; update it, or capture with --sign SITE.key",
            port.display()
        ),
        other => bail!("unexpected reply to a capture commit: {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log record of `event` (index, chain and times are not what these tests look at).
    fn entry(event: Event) -> mgear_appliance_api::custody::LogEntry {
        mgear_appliance_api::custody::LogEntry {
            index: 0,
            prev: [0; 32],
            uptime_ms: 0,
            unix_time: None,
            event,
        }
    }

    /// A directory given for a secret file is said to be one, with the file to give: the
    /// PIN file's said "Is a directory (os error 21)", after a warning about its mode.
    #[test]
    fn a_directory_given_for_a_secret_file_is_named_as_one() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        let said = |e: crate::Error| e.to_string();
        let pin = said(read_pin(Some(p), false).err().unwrap());
        assert!(
            pin.contains("it is a directory, not a file")
                && pin.contains("give the file that holds the PIN"),
            "{pin}"
        );
    }

    #[test]
    fn power_ups_tell_records_cut_from_the_log() {
        let up = |boot| entry(Event::PowerUp { boot });
        let torn = entry(Event::TornTailDropped { bytes: 7 });
        // Provisioned at boot 1, then boots 2 and 3: whole.
        assert_eq!(missing_power_ups(&[up(2), up(3)], 3), None);
        assert_eq!(missing_power_ups(&[], 1), None);
        // A torn record of boot 3, dropped at boot 4: no cut.
        assert_eq!(missing_power_ups(&[up(2), torn, up(4)], 4), None);
        // Boots 3 and 4 cut out, or the last boots cut off the end.
        let gap = missing_power_ups(&[up(2), up(5)], 5).unwrap();
        assert!(gap.contains("from power-up #2 to power-up #5"), "{gap}");
        // Provisioning is named as where the log goes from only when it holds it.
        let provisioned = entry(Event::Provisioned { identity: [7; 32] });
        let gap = missing_power_ups(&[provisioned, up(4)], 4).unwrap();
        assert!(
            gap.contains("from provisioning (boot 1) to power-up #4"),
            "{gap}"
        );
        let gap = missing_power_ups(&[up(4)], 4).unwrap();
        assert!(
            gap.contains(
                "from its first record, with no provisioning (boot 1) before it, to power-up #4"
            ),
            "{gap}"
        );
        let end = missing_power_ups(&[up(2), up(3)], 5).unwrap();
        assert!(
            end.contains("last power-up is #3") && end.contains("5 boots"),
            "{end}"
        );
    }
    /// A provisioned appliance's log starts with its provisioning: a deleted log (a lone
    /// `power-up #1` once the counters were zeroed) verified.
    #[test]
    fn a_log_without_its_provisioning_is_named() {
        let key = [7u8; 32];
        assert_eq!(
            missing_start(&[entry(Event::Provisioned { identity: key })], &key),
            None
        );
        let lone = missing_start(&[entry(Event::PowerUp { boot: 1 })], &key).unwrap();
        assert!(
            lone.contains("starts with \"power-up #1\", not with its provisioning")
                && lone.contains(&full_fingerprint(&key)),
            "{lone}"
        );
        assert!(missing_start(&[], &key).unwrap().contains("log is empty"));
        // Another identity's provisioning is not this one's.
        let other = [8u8; 32];
        assert!(missing_start(&[entry(Event::Provisioned { identity: other })], &key).is_some());
    }

    use mgear_appliance_api::attest::{AttestationBody, AttestationKind};
    use mgear_appliance_api::protocol::{decode_frame, encode_frame};
    use std::io::{Read, Write};

    /// A fake appliance answering `Arrival` with an attestation whose
    /// challenge is chosen by `answer` from the one the host sent.
    struct FakeArrival {
        out: Vec<u8>,
        answer: fn([u8; 32]) -> [u8; 32],
        /// Set when the host, the arrival taken, goes on to read the custody log.
        log_asked: std::sync::Arc<std::sync::atomic::AtomicBool>,
    }

    impl Read for FakeArrival {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.out.len());
            buf[..n].copy_from_slice(&self.out[..n]);
            self.out.drain(..n);
            Ok(n)
        }
    }

    impl Write for FakeArrival {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            let (id, req): (u32, Request) = decode_frame(data).expect("one request frame");
            // A random challenge whose bytes read as a reply has the client ask `Info` first
            // (an echoing port is told apart so): any answer will do (the fake panicked,
            // "unexpected Info", when the challenge drawn happened to read so).
            if let Request::Info = req {
                self.out.extend(encode_frame(
                    id,
                    &Response::error(
                        mgear_appliance_api::protocol::ErrorCode::Storage,
                        "no info in this fake",
                    ),
                ));
                return Ok(data.len());
            }
            if let Request::Log { .. } = req {
                self.log_asked
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                self.out.extend(encode_frame(
                    id,
                    &Response::error(
                        mgear_appliance_api::protocol::ErrorCode::Storage,
                        "no custody log in this fake",
                    ),
                ));
                return Ok(data.len());
            }
            let Request::Arrival { challenge } = req else {
                panic!("unexpected {req:?}")
            };
            let body = AttestationBody {
                kind: AttestationKind::Arrival,
                identity: [0; 32],
                medium_id: [1; 16],
                medium_bytes: 1 << 20,
                files: Vec::new(),
                captures: 1,
                records: 1,
                region_size: 1 << 20,
                regions: vec![[2; 32]],
                counter: 2,
                uptime_ms: 1,
                unix_time: None,
                seal_digest: Some([3; 32]),
                challenge: Some((self.answer)(challenge)),
                log_records: 5,
                log_head: [4; 32],
            };
            let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
            let att = Attestation::sign(body, &key);
            self.out.extend(encode_frame(
                id,
                &Response::Arrival {
                    attestation: Some(att),
                    problems: Vec::new(),
                },
            ));
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The verifier's mending commands name this appliance, not a placeholder medium.
    #[test]
    fn a_problems_command_names_the_appliance() {
        assert_eq!(
            on_appliance(
                "remove it with `mgear capture --abort --medium MEDIUM --name w`",
                Path::new("/dev/ttyACM0")
            ),
            "remove it with `mgear capture --abort --appliance /dev/ttyACM0 --name w`"
        );
    }

    /// The exit code, and whether the host went on to read the custody log (which follows
    /// an arrival it takes).
    fn arrival_with(answer: fn([u8; 32]) -> [u8; 32]) -> (i32, bool) {
        let log_asked = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut c = Client::over(Box::new(FakeArrival {
            out: Vec::new(),
            answer,
            log_asked: log_asked.clone(),
        }));
        let code = run_cmd(&mut c, Cmd::Arrival, true, Path::new("appliance.tty"))
            .unwrap_or_else(|e| crate::exit::code_of(&e));
        (code, log_asked.load(std::sync::atomic::Ordering::SeqCst))
    }

    #[test]
    fn arrival_accepts_only_an_answer_to_its_own_challenge() {
        // Taken: the custody log is read next (this fake has none: not exit 1 of a replay).
        let (code, log_asked) = arrival_with(|c| c);
        assert!(log_asked && code != 1, "{code}");
        // A replayed arrival signed for another challenge.
        assert_eq!(arrival_with(|_| [0x5a; 32]), (1, false));
        assert_eq!(
            arrival_with(|mut c| {
                c[0] ^= 1;
                c
            }),
            (1, false)
        );
    }

    #[test]
    fn progress_shows_an_eta_and_stays_short() {
        let t0 = std::time::Instant::now();
        let mut eta = Eta::default();
        assert!(eta.update("hashing", 0, 1000, t0).is_some());
        let s = std::time::Duration::from_secs;
        // 10 % in 20 s: 180 s left.
        let line = eta.update("hashing", 100, 1000, t0 + s(20)).unwrap();
        assert!(
            line.contains("10%") && line.contains("3 min 0 s left"),
            "{line}"
        );
        // Neither 10 % more nor 10 s later: no line.
        assert!(eta.update("hashing", 120, 1000, t0 + s(25)).is_none());
        // A quiet stretch still prints every 10 s.
        assert!(eta.update("hashing", 130, 1000, t0 + s(31)).is_some());
        let done = eta.update("hashing", 1000, 1000, t0 + s(40)).unwrap();
        assert!(done.contains("100%") && !done.contains("left"), "{done}");
        // Its end repeated (the appliance resends its last frame) is not said again, even 10 s on.
        assert!(eta.update("hashing", 1000, 1000, t0 + s(41)).is_none());
        assert!(eta.update("hashing", 1000, 1000, t0 + s(55)).is_none());
        // A new phase starts its own estimate.
        assert!(eta.update("verifying", 0, 10, t0 + s(56)).is_some());
    }
}
