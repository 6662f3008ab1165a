//! `mgear-appliance-sim`: the appliance firmware core running on the host.
//!
//! ```text
//! mgear-appliance-sim --medium medium.img --state state.dir \
//!     --console-link ./appliance.tty --nbd ./appliance.sock
//! ```
//!
//! - Console: a pseudo-terminal, symlinked at `--console-link` (what
//!   `mgear appliance --port` and `screen` open). The link appears only once
//!   the simulator is ready (medium exported, console listening), so a
//!   script can wait for it.
//! - Medium: the raw image file `--medium` (e.g. a FAT32 image made with
//!   `mkfs.fat -F 32 -C medium.img 131072`), exported over NBD on the Unix
//!   socket `--nbd` through the firmware's block service (writes refused
//!   with EPERM unless unlocked and not sealed). `qemu-img`, `qemu-io`,
//!   `nbdinfo` and `nbdcopy` can use `nbd+unix:///?socket=./appliance.sock`.
//! - Medium lock: the file `--nbd` path + `.lock` (`./appliance.sock.lock`),
//!   made at start and removed at a clean stop. A host command `flock(2)`s it
//!   for as long as it has the medium open, exclusively when it writes, the
//!   way it locks an image or a device (`mgear::lock`): two host commands
//!   writing one FAT through the export would each keep their own FAT in
//!   memory and damage the medium while both reported success. (A board's
//!   medium is a block device on the host, locked as such.)
//! - Secret store and custody log: files in `--state` (layout in the
//!   crate's library doc, `mgear_appliance_sim`).
//!
//! SIGTERM/SIGINT stop it cleanly (counters saved, medium flushed, socket
//! and link removed). SIGKILL is the simulated power cut: every state write
//! is atomic or an fsynced append, so the next start recovers (a torn last
//! custody record is dropped and logged).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::Parser;
use mgear_appliance_sim::pty::{self, ConsoleLink, Pty};
use mgear_appliance_sim::{Export, SimPlatform};
use mgear_firmware::appliance::{Appliance, Config};

/// Run the appliance firmware on the host: console on a pty, medium over NBD.
#[derive(Parser, Debug)]
#[command(name = "mgear-appliance-sim", version)]
struct Args {
    /// Raw medium image (a multiple of 512 bytes; FAT32 for captures).
    #[arg(long)]
    medium: PathBuf,
    /// State directory: secret store and custody log (created if missing).
    #[arg(long)]
    state: PathBuf,
    /// Where to put a symlink to the console pty.
    #[arg(long)]
    console_link: PathBuf,
    /// Unix socket for the medium's NBD export.
    #[arg(long)]
    nbd: PathBuf,
    /// TESTS ONLY, INSECURE: fast PIN hashing (1000 PBKDF2 rounds) and
    /// millisecond back-off, so scenarios with many PIN attempts run quickly.
    #[arg(long)]
    test_timing: bool,
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    if let Err(e) = run(Args::parse()) {
        eprintln!("mgear-appliance-sim: error: {}", chain(&e));
        std::process::exit(1);
    }
}

/// `e` and its causes joined with ": ", leaving out a cause whose text the line already
/// holds (an error that prints its source, as the NBD crate's do, said it twice).
fn chain(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// `path` made absolute (it may not exist yet), so `info` can tell a host
/// in another directory where the socket is.
fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))
}

fn run(args: Args) -> anyhow::Result<()> {
    let console = Pty::open()?;
    let slave = console.slave_path().to_path_buf();
    let waiter = console.waiter()?;
    let nbd_socket = absolute(&args.nbd)?;
    // The link is made last (its appearance says "ready"), but a path it cannot take is
    // refused before the firmware starts.
    ConsoleLink::check(&args.console_link)?;
    if let Ok(m) = std::fs::symlink_metadata(&nbd_socket) {
        use std::os::unix::fs::FileTypeExt;
        if !m.file_type().is_socket() {
            return Err(anyhow!(
                "{} exists and is not a socket; choose another --nbd or remove it",
                nbd_socket.display()
            ));
        }
        // A socket someone answers on is another simulator's export: taking it over sent
        // that appliance's commands to this one, and this one removed it when it stopped.
        if std::os::unix::net::UnixStream::connect(&nbd_socket).is_ok() {
            return Err(anyhow!(
                "{} is the export of another running simulator (it answers there): one \
                 simulator per appliance; give this one its own --nbd and --console-link",
                nbd_socket.display()
            ));
        }
    }

    let mut cfg = Config::default();
    if args.test_timing {
        log::warn!(
            "--test-timing: fast PIN hashing and short back-off; never use this for real media"
        );
        cfg.pin_iterations = 1_000;
        cfg.backoff_base_ms = 5;
        cfg.backoff_max_ms = 50;
    }
    // Held before anything of the state is read or repaired (a torn custody log is cut back
    // at open): a second simulator on the same appliance would act on it too.
    // The directories this start makes (the state directory and any missing parents): a
    // simulator refused at its start removes them again (an empty state directory looked like
    // a second appliance's), never one that holds anything, and changes nothing of an
    // existing one (its mode is set once the claim is held).
    let mut made = Vec::new();
    let mut at = args.state.as_path();
    while std::fs::symlink_metadata(at).is_err() {
        made.push(at.to_path_buf());
        match at.parent() {
            Some(p) if !p.as_os_str().is_empty() => at = p,
            _ => break,
        }
    }
    let is_dir = std::fs::symlink_metadata(&args.state).is_ok_and(|m| m.is_dir());
    if !made.is_empty() || !is_dir {
        // Made here, or refused here with its own words (a symlink, a file).
        mgear_appliance_sim::files::private_dir(&args.state)
            .with_context(|| format!("state directory {}", args.state.display()))?;
    }
    let started = (|| {
        let claim = mgear_appliance_sim::files::claim(&args.state, &args.medium)
            .with_context(|| format!("starting on {}", args.medium.display()))?;
        mgear_appliance_sim::files::private_dir(&args.state)
            .with_context(|| format!("state directory {}", args.state.display()))?;
        let platform = SimPlatform::open(&args.state, &args.medium, console, nbd_socket.clone())
            .map_err(|e| anyhow!("{e}"))?;
        let app =
            Appliance::new(platform, cfg).map_err(|e| anyhow!("starting the firmware: {e}"))?;
        anyhow::Ok((claim, app))
    })();
    let (_claim, app) = match started {
        Ok(up) => up,
        Err(e) => {
            // Only what is still empty goes (a missing medium left the new directories).
            for dir in &made {
                let _ = std::fs::remove_dir(dir);
            }
            return Err(e);
        }
    };
    log::info!("firmware up, state {}", app.state());
    let app = Arc::new(Mutex::new(app));

    let stop = Arc::new(AtomicBool::new(false));
    for sig in [
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .context("installing signal handlers")?;
    }

    let medium_lock = mgear_nbd_proto::export_lock_path(&nbd_socket);
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&medium_lock)
        .with_context(|| format!("creating the medium lock {}", medium_lock.display()))?;
    let export = Export::new(Arc::clone(&app)).context("reading the medium size")?;
    let server = mgear_nbd_proto::serve_unix(&nbd_socket, "", Arc::new(export))
        .with_context(|| format!("serving the medium on {}", nbd_socket.display()))?;
    // Last: the link's appearance tells scripts the appliance is ready.
    let link = ConsoleLink::create(&args.console_link, &slave)?;
    log::info!(
        "console {} -> {}, medium {} at nbd+unix:///?socket={}",
        args.console_link.display(),
        slave.display(),
        args.medium.display(),
        nbd_socket.display()
    );

    let mut failures = 0u32;
    while !stop.load(Ordering::SeqCst) {
        match pty::wait_readable(&waiter, Duration::from_millis(100)) {
            Ok(false) => continue,
            Ok(true) => {}
            Err(e) => return Err(e).context("waiting for console input"),
        }
        let polled = match app.lock() {
            Ok(mut a) => a.poll_console(),
            Err(_) => return Err(anyhow!("the firmware core panicked; stopping")),
        };
        match polled {
            Ok(_) => failures = 0,
            Err(kind) => {
                // A console error is the host's side going away; keep the
                // appliance up, but do not spin on a persistent failure.
                failures += 1;
                log::warn!("console error: {kind:?}");
                std::thread::sleep(Duration::from_millis(50 * u64::from(failures.min(20))));
            }
        }
    }

    log::info!("stopping");
    drop(link);
    server.stop();
    let _ = std::fs::remove_file(&medium_lock);
    let mut a = app
        .lock()
        .map_err(|_| anyhow!("the firmware core panicked; state was saved as it went"))?;
    a.shutdown()
        .map_err(|e| anyhow!("saving state on shutdown: {e}"))?;
    log::info!("stopped cleanly");
    Ok(())
}
