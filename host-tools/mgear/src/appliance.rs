//! `mgear appliance`: talk to the appliance (or `mgear-appliance-sim`) over
//! its console.
//!
//! ```text
//! mgear appliance [--port PATH] [--json] info
//! mgear appliance provision [--pin-file FILE]   # factory -> locked; makes the identity
//! mgear appliance unlock [--pin-file FILE]      # locked -> unlocked (medium writable)
//! mgear appliance lock
//! mgear appliance verify                        # keyless check of every capture
//! mgear appliance seal                          # verify, write-protect, sign
//! mgear appliance arrival                       # at the target: verify again, compare, sign
//! mgear appliance attestations [--out DIR]      # the seal/arrival attestations (files for ingest)
//! mgear appliance log [--verify]                # custody log; --verify checks chain + signatures
//! mgear appliance erase [--overwrite] --yes     # crypto-erase (needs unlock)
//! mgear appliance list                          # attached appliances (USB id 1209:4d47)
//! ```
//!
//! Without `--port` the appliance is found by its USB vendor/product id.
//! PINs are read from the terminal (without echo) unless `--pin-file` is
//! given; they never appear on the command line. Exit codes: 0 success,
//! 1 a check failed (verify/arrival problems, a damaged custody log),
//! 2 refused (wrong PIN, wrong state) or bad usage, 3 I/O.

mod client;
mod discover;
mod gate;
// The HID transport's framing; the hidapi transport that uses it on a real
// board is not written yet, so it is compiled for its tests only.
#[cfg(test)]
mod hid;

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use image_format::store::{FatStore, FlushIsDurable};
use image_format::Store;
use mgear_firmware::attest::fingerprint;
use mgear_firmware::custody::{verify_log, LogRecord};
use mgear_firmware::protocol::{Info, Pin, Problem, Request, Response, VerifyReport};
use zeroize::Zeroizing;

pub use client::{ApplianceError, Client};
pub use gate::{find_attestations, ingest_gate, sha256_file};

/// Arguments of `mgear appliance`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The appliance's console: a serial device or the simulator's
    /// --console-link. Default: the one attached appliance found by USB id.
    #[arg(long, global = true, env = "MGEAR_APPLIANCE")]
    pub port: Option<PathBuf>,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// What to ask the appliance.
#[derive(clap::Subcommand, Debug)]
pub enum Cmd {
    /// State, identity, medium and counters.
    Info,
    /// First use: set the PIN and create the appliance's Ed25519 identity.
    Provision {
        /// Read the PIN from this file (first line) instead of the terminal.
        #[arg(long)]
        pin_file: Option<PathBuf>,
    },
    /// Enter the PIN: the medium accepts writes until `lock` or `seal`.
    Unlock {
        /// Read the PIN from this file (first line) instead of the terminal.
        #[arg(long)]
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
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print the custody log.
    Log {
        /// Check the hash chain and every signature against the appliance identity.
        #[arg(long)]
        verify: bool,
    },
    /// Crypto-erase: destroy the key slots on the medium and the appliance's secrets.
    Erase {
        /// Also overwrite the whole medium afterwards.
        #[arg(long)]
        overwrite: bool,
        /// Confirm: this cannot be undone.
        #[arg(long)]
        yes: bool,
    },
    /// List attached appliances (USB serial devices with MotionGear's id).
    List,
}

/// Run `mgear appliance`; returns the process exit code.
pub fn run(args: Args) -> anyhow::Result<i32> {
    if let Cmd::List = args.cmd {
        let found = discover::list()?;
        if args.json {
            let v: Vec<_> = found
                .iter()
                .map(|f| serde_json::json!({"port": f.port, "serial_number": f.serial_number}))
                .collect();
            println!("{}", serde_json::to_string_pretty(&v)?);
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
    let port = resolve_port(args.port.as_deref())?;
    let mut c = Client::open(&port)?;
    match run_cmd(&mut c, args.cmd, args.json) {
        Ok(code) => Ok(code),
        Err(e) => match e.downcast_ref::<ApplianceError>() {
            Some(ae) => {
                if args.json {
                    println!(
                        "{}",
                        serde_json::json!({"error": {"code": format!("{:?}", ae.code), "message": ae.message}})
                    );
                }
                eprintln!("mgear: error: {ae}");
                Ok(2)
            }
            None => Err(e),
        },
    }
}

fn resolve_port(port: Option<&Path>) -> anyhow::Result<PathBuf> {
    match port {
        Some(p) => Ok(p.to_path_buf()),
        None => discover::find_one(),
    }
}

fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn progress_printer(json: bool) -> impl FnMut(&str, u64, u64) {
    let mut last = 0u64;
    move |what: &str, done: u64, total: u64| {
        // One line per 10% keeps logs short on large media.
        let pct = (done * 100).checked_div(total).unwrap_or(100);
        if !json && (pct >= last + 10 || done == total) {
            eprintln!("  {what}: {done}/{total} ({pct}%)");
            last = pct;
        }
    }
}

fn read_pin(pin_file: Option<&Path>, confirm: bool) -> anyhow::Result<Pin> {
    let text = match pin_file {
        Some(f) => {
            let raw = Zeroizing::new(
                std::fs::read_to_string(f)
                    .with_context(|| format!("reading PIN file {}", f.display()))?,
            );
            Zeroizing::new(raw.lines().next().unwrap_or("").to_string())
        }
        None => {
            let a = Zeroizing::new(
                rpassword::prompt_password("Appliance PIN: ").context("reading the PIN")?,
            );
            if confirm {
                let b = Zeroizing::new(
                    rpassword::prompt_password("Repeat PIN: ").context("reading the PIN")?,
                );
                if *a != *b {
                    bail!("the two PINs differ; nothing was changed");
                }
            }
            a
        }
    };
    if text.is_empty() {
        bail!("empty PIN");
    }
    Ok(Pin::new(text.as_str()))
}

fn print_info(i: &Info) {
    println!("state:          {}", i.state);
    println!(
        "firmware:       {} (protocol {})",
        i.firmware_version, i.protocol_version
    );
    match (&i.identity_pubkey, &i.fingerprint) {
        (Some(k), Some(f)) => {
            println!("identity:       {f} ({})", hex(k));
            // The full form is what a target pins (--trust-appliance).
            println!("fingerprint:    {}", crate::sitekey::fingerprint(k));
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
    if i.retry_after_ms > 0 {
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

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn print_report(r: &VerifyReport) {
    println!(
        "{} captures, {} segments, {} records, {} stored bytes checked",
        r.captures, r.segments, r.records, r.bytes
    );
    print_problems(&r.problems);
}

fn print_problems(problems: &[Problem]) {
    for p in problems {
        println!("PROBLEM: {p}");
    }
}

fn info(c: &mut Client) -> anyhow::Result<Info> {
    match c.call(&Request::Info)? {
        Response::Info(i) => Ok(i),
        other => bail!("unexpected reply to Info: {other:?}"),
    }
}

/// Every custody-log record, page by page.
pub fn fetch_log(c: &mut Client) -> anyhow::Result<Vec<LogRecord>> {
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

fn run_cmd(c: &mut Client, cmd: Cmd, json: bool) -> anyhow::Result<i32> {
    match cmd {
        Cmd::List => unreachable!("handled before opening a port"),
        Cmd::Info => {
            let i = info(c)?;
            if json {
                let mut v = serde_json::to_value(&i)?;
                if let (Some(k), Some(obj)) = (&i.identity_pubkey, v.as_object_mut()) {
                    obj.insert(
                        "fingerprint_full".into(),
                        crate::sitekey::fingerprint(k).into(),
                    );
                }
                print_json(&v)?;
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
                        println!(
                            "provisioned; identity {fingerprint} ({})",
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
            expect_simple(
                c,
                &Request::Unlock { pin },
                json,
                "unlocked: the medium accepts writes",
            )
        }
        Cmd::Lock => expect_simple(c, &Request::Lock, json, "locked: the medium is read-only"),
        Cmd::Verify => match c.call_progress(&Request::Verify, &mut progress_printer(json))? {
            Response::Verified(r) => {
                if json {
                    print_json(&r)?;
                } else {
                    print_report(&r);
                    println!(
                        "{}",
                        if r.ok() {
                            "medium verified"
                        } else {
                            "medium FAILED verification"
                        }
                    );
                }
                Ok(if r.ok() { 0 } else { 1 })
            }
            other => bail!("unexpected reply to Verify: {other:?}"),
        },
        Cmd::Seal => match c.call_progress(&Request::Seal, &mut progress_printer(json))? {
            Response::Sealed {
                attestation,
                report,
            } => {
                if json {
                    print_json(&serde_json::json!({"attestation": attestation, "report": report}))?;
                } else {
                    print_report(&report);
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
        Cmd::Arrival => match c.call_progress(&Request::Arrival, &mut progress_printer(json))? {
            Response::Arrival {
                attestation,
                problems,
            } => {
                if json {
                    print_json(
                        &serde_json::json!({"attestation": attestation, "problems": problems}),
                    )?;
                } else {
                    print_problems(&problems);
                    match &attestation {
                        Some(a) if problems.is_empty() => {
                            println!(
                                "arrival check passed; arrival attestation {}",
                                hex(&a.digest())
                            )
                        }
                        _ => println!("arrival check FAILED: the medium changed since the seal"),
                    }
                }
                Ok(if attestation.is_some() && problems.is_empty() {
                    0
                } else {
                    1
                })
            }
            other => bail!("unexpected reply to Arrival: {other:?}"),
        },
        Cmd::Attestations { out } => match c.call(&Request::GetAttestations)? {
            Response::Attestations { seal, arrival } => {
                if let Some(dir) = out {
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
                            Some(a) => println!(
                                "{name}: {} by {} counter {} ({} files, {} regions)",
                                hex(&a.digest()),
                                fingerprint(&a.body.identity),
                                a.body.counter,
                                a.body.files.len(),
                                a.body.regions.len()
                            ),
                            None => println!("{name}: none"),
                        }
                    }
                }
                Ok(0)
            }
            other => bail!("unexpected reply to GetAttestations: {other:?}"),
        },
        Cmd::Log { verify } => {
            let records = fetch_log(c)?;
            let entries = if verify {
                let key = info(c)?.identity_pubkey.ok_or_else(|| {
                    anyhow!("the appliance has no identity: nothing to verify against")
                })?;
                match verify_log(&records, &key) {
                    Ok(e) => e,
                    Err(e) => {
                        if json {
                            print_json(
                                &serde_json::json!({"verified": false, "index": e.index, "error": e.to_string()}),
                            )?;
                        } else {
                            println!("custody log FAILED verification: {e}");
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
                    let when = e
                        .unix_time
                        .map(|t| t.to_string())
                        .unwrap_or_else(|| "-".into());
                    println!(
                        "{:>5}  t={when}  up={}ms  {:?}",
                        e.index, e.uptime_ms, e.event
                    );
                }
                if verify {
                    println!(
                        "custody log verified: {} records, hash chain and signatures intact",
                        records.len()
                    );
                }
            }
            Ok(0)
        }
        Cmd::Erase { overwrite, yes } => {
            if !yes {
                bail!("erase destroys the key slots and the appliance identity for good; add --yes to confirm");
            }
            match c.call_progress(&Request::Erase { overwrite }, &mut progress_printer(json))? {
                Response::Erased {
                    key_slots,
                    medium_overwritten,
                } => {
                    if json {
                        print_json(
                            &serde_json::json!({"key_slots": key_slots, "medium_overwritten": medium_overwritten}),
                        )?;
                    } else {
                        println!(
                            "crypto-erased: {key_slots} key slot file(s) destroyed{}",
                            if medium_overwritten {
                                ", medium overwritten"
                            } else {
                                ""
                            }
                        );
                    }
                    Ok(0)
                }
                other => bail!("unexpected reply to Erase: {other:?}"),
            }
        }
    }
}

fn expect_simple(c: &mut Client, req: &Request, json: bool, text: &str) -> anyhow::Result<i32> {
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

/// The appliance's medium, reached through its block service: asks `info`
/// for the locator (the simulator's `nbd+unix://` socket), connects with
/// `mgear_nbd::NbdFile` and opens the FAT32 volume.
pub fn open_medium(port: &Path) -> anyhow::Result<Box<dyn Store>> {
    let mut c = Client::open(port)?;
    let i = info(&mut c)?;
    let url: mgear_nbd::NbdUrl = i.medium_locator.parse().map_err(|e| {
        anyhow!(
            "the appliance's medium is at {:?}, which this host cannot reach as NBD ({e}); \
             on a board the medium is a USB mass-storage device: use --medium fat:/dev/sdX",
            i.medium_locator
        )
    })?;
    let client = mgear_nbd::Client::connect(&url, &mgear_nbd::ConnectOptions::default())
        .with_context(|| format!("connecting to the appliance's medium at {url}"))?;
    let file = FlushIsDurable(mgear_nbd::NbdFile::new(client));
    let store = FatStore::open(file).map_err(|e| anyhow!("opening the appliance's medium: {e}"))?;
    Ok(Box::new(ApplianceMedium(Some(store))))
}

type NbdFat = FatStore<FlushIsDurable<mgear_nbd::NbdFile>>;

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
}

/// The appliance's Ed25519 public key (recorded in the manifest at capture).
pub fn appliance_identity(port: &Path) -> anyhow::Result<[u8; 32]> {
    let mut c = Client::open(port)?;
    info(&mut c)?.identity_pubkey.ok_or_else(|| {
        anyhow!(
            "the appliance at {} is not provisioned: run `mgear appliance provision`",
            port.display()
        )
    })
}

/// Record a capture event in the appliance's custody log: `generation`
/// `None` when capture `name` starts writing, `Some(g)` once generation `g`
/// is committed. For `mgear capture --appliance` (not wired yet by the CLI).
#[allow(dead_code)]
pub fn capture_event(port: &Path, name: &str, generation: Option<u64>) -> anyhow::Result<()> {
    let mut c = Client::open(port)?;
    let req = match generation {
        None => Request::CaptureBegin {
            name: name.to_string(),
        },
        Some(generation) => Request::CaptureCommit {
            name: name.to_string(),
            generation,
        },
    };
    match c.call(&req)? {
        Response::Recorded { .. } => Ok(()),
        other => bail!("unexpected reply to a capture event: {other:?}"),
    }
}
