//! `mgear serve`, `mgear sync`, `mgear cutover`: keep the source running after
//! the appliance left, catch the ingested volume up over the network, and cut over.
//!
//! ```text
//! target$ mgear serve --target file:web01.raw --medium fat:medium.img --name web01 \
//!             --identity target.key --trust site.pub --listen 127.0.0.1:7410
//! source$ mgear sync --source /dev/vg0/web01-snap --to 127.0.0.1:7410 --name web01 \
//!             --sign site.key --rate-limit 10Mbit/s
//! source$ mgear sync --source 'nbd+unix:///?socket=/run/web01.sock' --dirty-bitmap b0 --to ... --name web01
//! source$ mgear cutover --source ... --to ... --name web01 --quiesce 'systemctl stop app' \
//!             --boot-target file:web01.raw --wait-for 'login:'
//! ```
//!
//! The target tells the source the keyed chunk id of every chunk of its
//! volume; the source sends only chunks whose id differs. After the
//! handshake every message is sealed under per-session keys derived from the
//! capture's data key (the source's key cache; the target unwraps it from the
//! capture's key slot); the source signs the session with the capture site's
//! key and the target applies only sessions signed by a key it pins. See
//! `wire.rs` (frames), `session.rs` (keys, sealing, signature) and SYNC.md
//! beside this crate for usage and the whole layout.

mod cutover;
mod session;
mod source;
mod target;
pub mod wire;

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::error::Context;
use image_format::{CaptureReader, DataKey};
use serde::Serialize;

use crate::exit::{coded_next, usage, IO, OK, USAGE};
use crate::units::human_bytes;

pub use cutover::cutover;
pub use source::Stats;

/// `mgear serve`, typed (the binary's `cli::sync` fills it in from the flags).
#[derive(Debug)]
pub struct Serve {
    /// The ingested volume to keep in sync: file:PATH (raw), dev:/dev/DEVICE or an NBD URL (a bare PATH is the file or device there).
    pub target: String,
    pub medium: crate::medium::Where,
    /// Capture name (the data key is unwrapped from its key slot).
    pub name: String,
    /// Target identity (secret key from `mgear keygen`).
    pub identity: Option<PathBuf>,
    /// Passphrase file (if the capture was made with one).
    pub passphrase_file: Option<PathBuf>,
    /// Address to listen on (HOST:PORT; port 0 picks a free one, printed on stdout).
    pub listen: String,
    /// Exit after the first sync that completes.
    pub once: bool,
    /// Capture site public key (`site.pub` from `mgear keygen --signing`) whose signed
    /// syncs are accepted; repeatable. Other peers are refused.
    pub trust: Vec<PathBuf>,
    /// Accept unsigned syncs and unpinned signers (loudly logged): anyone with the
    /// capture's data key could then rewrite the volume.
    pub allow_untrusted: bool,
    /// Seconds a new connection has to prove the capture key and its origin.
    pub handshake_timeout: f64,
    /// Seconds an authenticated connection may stay silent.
    pub idle_timeout: f64,
    /// Connections served at once (more are told to retry).
    pub max_peers: usize,
    /// Serve a file volume with no record of an ingest or serve of this capture here.
    pub force: bool,
}

/// `mgear sync`, typed (the binary's `cli::sync` fills it in; `cutover` runs one too).
#[derive(Debug, Clone)]
pub struct Plan {
    /// Disk to read: a file, a block device, nbd://HOST:PORT/EXPORT or nbd+unix:///EXPORT?socket=PATH.
    pub source: String,
    /// Where `mgear serve` listens (HOST:PORT).
    pub to: String,
    /// Capture name.
    pub name: String,
    /// Key cache written by `mgear capture` [default: $XDG_STATE_HOME/mgear/keys or ~/.local/state/mgear/keys].
    pub key_cache: Option<PathBuf>,
    /// Read only the ranges this qemu dirty bitmap marks changed (NBD sources exported with `qemu-nbd -B NAME`).
    pub dirty_bitmap: Option<String>,
    /// Hold the average rate on the wire, bytes per second (`units::parse_rate`).
    pub rate_limit: Option<f64>,
    /// Reconnect this many times after a dropped connection.
    pub retries: u32,
    /// Seconds to wait before reconnecting.
    pub retry_wait: f64,
    /// Print the summary as one JSON object.
    pub json: bool,
    /// Sign each session with this capture site key (`mgear keygen --signing`),
    /// so a target that pins the site (`serve --trust site.pub`) accepts it.
    pub sign: Option<PathBuf>,
    /// Sync even when sampled chunks say the source is not the captured disk
    /// (the whole disk really was rewritten since the capture).
    pub force: bool,
}

/// `mgear cutover`, typed (the binary's `cli::sync` fills it in from the flags).
#[derive(Debug)]
pub struct Cutover {
    pub sync: Plan,
    /// Shell command that quiesces the source (stop services, `fsfreeze -f /srv`); downtime starts here.
    pub quiesce: String,
    /// Shell command that brings the source back if the cutover fails after quiescing.
    pub resume: Option<String>,
    /// Volume to boot after the final sync: file:PATH, qcow2:PATH, dev:PATH or nbd://...
    pub boot_target: String,
    /// Regex on the serial console that proves the target booted.
    pub wait_for: String,
    /// Seconds to wait for the regex.
    pub boot_timeout: u64,
    /// Skip the warm sync before quiescing (the warm sync, run while the source still runs, is what keeps the downtime short).
    pub no_presync: bool,
}

/// Seconds from a command-line option.
fn seconds(v: f64, what: &str) -> crate::Result<Duration> {
    if !v.is_finite() || v <= 0.0 || v > 1e6 {
        return Err(usage(format!("{what} must be a number of seconds above 0")));
    }
    Ok(Duration::from_secs_f64(v))
}

/// Check `addr` is HOST:PORT (`flag` names it in the message); a port of 0
/// only where `any_port` (listening on any free port).
fn check_address(flag: &str, addr: &str, any_port: bool) -> crate::Result<()> {
    let ok = addr.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty() && port.parse::<u16>().is_ok_and(|p| any_port || p != 0)
    });
    if ok {
        return Ok(());
    }
    Err(usage(if any_port {
        format!(
            "{flag} {addr}: give HOST:PORT with a port from 0 to 65535 (e.g. 0.0.0.0:7878, or \
             127.0.0.1:0 for any free port)"
        )
    } else {
        format!(
            "{flag} {addr}: give HOST:PORT where `mgear serve` listens, with a port from 1 to \
             65535 (e.g. 127.0.0.1:7410, the address its `listening on` line prints)"
        )
    }))
}

/// Open the listening socket, with what to do when that fails.
fn bind(listen: &str) -> crate::Result<TcpListener> {
    use std::io::ErrorKind as K;
    TcpListener::bind(listen).map_err(|e| {
        let (code, next) = match e.kind() {
            K::AddrInUse => (
                IO,
                format!(
                    "another program listens on {listen}, perhaps another `mgear serve` (`ss -ltnp` \
                     names it): stop it, or give another --listen (port 0 picks a free one)"
                ),
            ),
            K::AddrNotAvailable => (
                USAGE,
                "give an address of this host in --listen (0.0.0.0:PORT listens on all of them)"
                    .to_string(),
            ),
            K::PermissionDenied => (
                IO,
                "ports below 1024 need privileges: give a port from 1024 up in --listen"
                    .to_string(),
            ),
            _ => (
                IO,
                "check that --listen names an address of this host, then run again".to_string(),
            ),
        };
        coded_next(code, format!("cannot listen on {listen}: {e}"), next)
    })
}

/// How many bytes of a volume of `vol_size` bytes serve keeps in sync with
/// capture `name`'s disk of `disk_size` bytes, and a note to print when that
/// is not the whole volume. A volume smaller than the disk, or a file of
/// another size (ingest writes a `file:` volume at exactly the disk's size),
/// is not the volume ingested from that capture: refused, rather than
/// letting a sync blame the source for it (or `--force` overwrite it). A
/// device or NBD export may be larger (a cloud volume rounded up to whole
/// GiB): ingest keeps its tail, and so does serve.
fn served_size(
    spec: &crate::spec::Target,
    vol_size: u64,
    disk_size: u64,
    name: &str,
) -> crate::Result<Option<String>> {
    if vol_size == disk_size {
        return Ok(None);
    }
    let larger_ok = !matches!(spec, crate::spec::Target::File(_));
    if vol_size > disk_size && larger_ok {
        return Ok(Some(format!(
            "{spec} is {vol_size} bytes, larger than capture {name}'s disk ({disk_size} bytes): \
             its first {disk_size} bytes are kept in sync, the rest is left as it is"
        )));
    }
    Err(coded_next(
        USAGE,
        format!(
            "--target {spec} is {vol_size} bytes ({}), but capture {name}'s disk is {disk_size} \
             bytes ({}): it is not the volume ingested from {name}, so no sync could apply to it",
            human_bytes(vol_size),
            human_bytes(disk_size)
        ),
        format!(
            "give serve the volume `mgear ingest --name {name}` wrote (or ingest {name} into this \
             one first; where the disk changed size since this volume was ingested, with \
             --force); a device or NBD export may be larger than the disk, a file: volume is \
             exactly its size"
        ),
    ))
}

/// A `file:` or `dev:` volume must exist: serve keeps an ingested volume,
/// it never creates one.
fn check_volume_exists(spec: &crate::spec::Target, name: &str) -> crate::Result<()> {
    let (crate::spec::Target::File(p) | crate::spec::Target::Dev(p)) = spec else {
        return Ok(());
    };
    match std::fs::metadata(p) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(coded_next(
            IO,
            format!("--target {spec}: the volume {} does not exist", p.display()),
            format!(
                "serve keeps a volume `mgear ingest` already wrote in sync with its source: \
                 ingest {name} into it first (`mgear ingest --name {name} --target {spec} ...`), \
                 or give the path of the ingested volume"
            ),
        )),
        _ => Ok(()),
    }
}

/// `mgear serve`.
pub fn serve(a: Serve) -> crate::Result<i32> {
    // A key that opens no capture is told what would, as ingest tells it (it said only "this
    // key does not open capture NAME").
    let (medium, identity, passphrase) = (
        a.medium.clone(),
        a.identity.clone(),
        a.passphrase_file.clone(),
    );
    serve_plan(a).map_err(|e| {
        crate::verify::explain_wrong_key(e, &medium, identity.as_deref(), passphrase.as_deref())
    })
}

fn serve_plan(a: Serve) -> crate::Result<i32> {
    // Every argument is checked, and the port bound, before the volume is
    // hashed: that is a full read, and a typo or a busy port found after it
    // wastes it.
    check_address("--listen", &a.listen, true)?;
    let spec = crate::spec::Target::parse(&a.target, crate::spec::Bare::Existing)?;
    let limits = target::Limits {
        handshake: seconds(a.handshake_timeout, "--handshake-timeout")?,
        idle: seconds(a.idle_timeout, "--idle-timeout")?,
        max_peers: a.max_peers.max(1),
    };
    if a.trust.is_empty() && !a.allow_untrusted {
        return Err(usage(
            "serve needs to know whose syncs to accept: --trust SITE.pub (the capture site's key \
             from `mgear keygen --signing`; repeatable), or --allow-untrusted to accept anyone \
             holding the capture's data key",
        ));
    }
    check_volume_exists(&spec, &a.name)?;
    crate::target::refuse_unfinished(&a.target, "serve")?;
    let mut trust = target::Trust {
        keys: Vec::new(),
        allow_untrusted: a.allow_untrusted,
    };
    for t in &a.trust {
        let k = crate::sitekey::read_public_key(t)?;
        eprintln!(
            "mgear serve: trusting capture site key {} ({})",
            crate::sitekey::fingerprint(&k.to_bytes()),
            t.display()
        );
        trust.keys.push(k.to_bytes());
    }
    if a.allow_untrusted {
        eprintln!(
            "mgear serve: WARNING: --allow-untrusted: syncs that no pinned capture site signed are \
             ACCEPTED; anyone holding this capture's data key can rewrite {}",
            spec
        );
    }
    let unlock = crate::verify::unlock_from(a.identity.as_deref(), a.passphrase_file.as_deref())?
        .ok_or_else(|| {
        usage("serve needs the capture's key: --identity TARGET.key or --passphrase-file FILE")
    })?;
    // Sources that connect while the volume is hashed wait in the backlog;
    // `listening on` is printed once they are answered.
    let listener = bind(&a.listen)?;
    let mut medium = a.medium.open_read_only()?;
    // One volume is one disk: a machine set is served disk by disk.
    if image_format::set::is_set(medium.store(), &a.name).unwrap_or(false) {
        let _ = medium.close();
        return Err(usage(format!(
            "{} is a machine set: serve each disk's volume with its own `mgear serve --name {}.dN` \
             (disk N's capture: {}.d0, {}.d1, ...; `mgear inspect` lists them) and sync each disk \
             to its serve",
            a.name, a.name, a.name, a.name
        )));
    }
    let (key, slot_id) = match image_format::unlock_data_key(medium.store(), &a.name, &unlock) {
        Ok(k) => k,
        // A name that is not on the medium is a usage error ("no key slot left" told it as
        // a crypto-erase).
        Err(e) => {
            return Err(crate::verify::unless_no_such_capture(
                e,
                &a.name,
                &a.medium.describe(),
                medium.store(),
            ))
        }
    };
    let reader = CaptureReader::open_with_key(medium.store(), &a.name, None, &key)?;
    let m = reader.manifest().clone();
    // The spelling on the medium, whatever case --name was given in.
    let name = reader.name().to_string();
    drop(reader);
    let roots: Vec<[u8; 32]> = image_format::capture_info(medium.store(), &name)?
        .map(|c| {
            c.generations
                .iter()
                .filter_map(|g| g.manifest_root)
                .collect()
        })
        .unwrap_or_default();
    medium.close()?;
    if slot_id.is_some_and(|id| id != m.capture_id) {
        return Err(image_format::Error::WrongKey {
            name: a.name.clone(),
        }
        .into());
    }
    let started = Instant::now();
    let id_key = session::IdKey::derive(&key, &m.capture_id);
    // Held while this serve runs: it answers from the chunk ids it hashed now.
    let _lock = match &spec {
        crate::spec::Target::File(p) | crate::spec::Target::Dev(p) => {
            Some(crate::lock::lock_volume(p, &spec.to_string())?)
        }
        _ => None,
    };
    let fence = match &spec {
        crate::spec::Target::File(p) => Some(target::Fence::of(p)?),
        _ => None,
    };
    let volume = crate::target::open_in_place(&spec)?;
    if let Some(note) = served_size(&spec, volume.size(), m.disk_size, &name)? {
        eprintln!("mgear serve: note: {note}");
    }
    if let (crate::spec::Target::File(p), false) = (&spec, a.force) {
        refuse_unrecorded_volume(p, &name, &roots, &m.capture_id)?;
    }
    let mut vol = target::ServedVolume::open(volume, m.disk_size, m.chunk_size, id_key)?;
    match &spec {
        crate::spec::Target::File(p) => vol.watch(p, &m.capture_id, &name),
        crate::spec::Target::Dev(p) => match target::device_key(p) {
            Some(key) => vol.note_served(&key, &m.capture_id, &name),
            None => vol.note_served(&spec.to_string(), &m.capture_id, &name),
        },
        other => vol.note_served(&other.to_string(), &m.capture_id, &name),
    }
    // An NBD export's server may restart under a long-running serve: connected to again.
    if let crate::spec::Target::Nbd(_) = &spec {
        let again = spec.clone();
        vol.reopen_with(Box::new(move || crate::target::open_in_place(&again)));
    }
    if vol.written_elsewhere() {
        eprintln!(
            "mgear serve: the first sync compares every chunk of {spec}, with --dirty-bitmap \
             too: no serve of {name} watched it before{}",
            if matches!(spec, crate::spec::Target::File(_)) {
                " (or something wrote it since the last sync that one served)"
            } else {
                " (a device has no change times to tell)"
            }
        );
    }
    eprintln!(
        "mgear serve: hashed {spec} ({}) in {:.1} s",
        human_bytes(vol.size()),
        started.elapsed().as_secs_f64()
    );
    crate::signals::install_for_serve();
    let addr = listener.local_addr().context("listening address")?;
    // Scripts and tests read the port from this line (with --listen HOST:0).
    if crate::output::json() {
        crate::output::emit(
            &serde_json::json!({"event": "listening", "address": addr.to_string()}),
        )?;
    } else {
        println!("listening on {addr}");
    }
    use std::io::Write as _;
    std::io::stdout().flush().context("writing to stdout")?;
    let served = target::Served {
        name,
        key,
        capture_id: m.capture_id,
        chunk_size: m.chunk_size,
        volume_size: vol.size(),
        trust,
        fence,
    };
    let total = target::serve_loop(listener, &served, vol, a.once, limits)?;
    if crate::output::json() {
        // A stream of events in the envelope: `listening`, then `stopped`.
        crate::output::emit(&serde_json::json!({
            "event": "stopped",
            "name": served.name,
            "target": spec.to_string(),
            "chunks": total.chunks,
            "bytes": total.bytes,
            "seconds": started.elapsed().as_secs_f64(),
        }))?;
    }
    eprintln!(
        "mgear serve: applied {} ({}) to {}",
        crate::units::count(total.chunks, "chunk"),
        human_bytes(total.bytes),
        spec
    );
    Ok(OK)
}

/// Refuse (exit 2) to serve the file `p` when nothing on this host says it holds capture
/// `name`: no finished ingest of one of its generations (`roots`) into this very file, and
/// no serve of it. Another disk's volume (a sibling cloned from one image shares most of its
/// chunks, so the sync's sample matched) was overwritten with this capture's disk and the
/// sync said "verified".
fn refuse_unrecorded_volume(
    p: &std::path::Path,
    name: &str,
    roots: &[[u8; 32]],
    capture_id: &[u8; 16],
) -> crate::Result<()> {
    let sdir = crate::target::state_dir(None)?;
    if crate::ingest::ingested_from(&sdir, p).is_some_and(|r| roots.contains(&r))
        || crate::target::served_before(p, capture_id, name)
    {
        return Ok(());
    }
    Err(crate::exit::coded_hint(
        USAGE,
        format!(
            "{} holds no ingest of {name} recorded on this host (in {}), and no serve of {name} \
             served it: it may hold another disk, which a sync would overwrite with {name}'s; \
             nothing was read or written",
            p.display(),
            sdir.display()
        ),
        format!(
            "give --target the volume `mgear ingest --name {name}` wrote here, or, if this file \
             is that volume (ingested on another host or with another --state-dir, then \
             copied), pass --force"
        ),
    ))
}

/// What `sync --json` prints.
#[derive(Debug, Serialize)]
pub struct SyncReport {
    /// The envelope names the command (`sync`); a sync inside `cutover`'s
    /// report carries none of its own.
    #[serde(skip)]
    pub command: &'static str,
    pub name: String,
    pub source: String,
    pub to: String,
    pub dirty_bitmap: Option<String>,
    #[serde(flatten)]
    pub stats: Stats,
    pub seconds: f64,
    /// Wire bytes per second over the whole run.
    pub wire_bytes_per_s: f64,
    pub rate_limit_bytes_per_s: Option<f64>,
    /// user + system CPU seconds of this process during the sync.
    pub cpu_seconds: f64,
    /// cpu_seconds / seconds: the share of one core the sync cost the source.
    pub cpu_share: f64,
}

/// A sync whose arguments were checked and whose key, signer and source
/// were loaded ([`prepare`]): what can be wrong with the command line is
/// found before anything is read or sent, and in `cutover` before the
/// source is quiesced.
pub(crate) struct Ready {
    plan: source::Plan,
    /// The source as [`prepare`] opened it, for the first sync that runs;
    /// later ones open it again.
    disk: Option<source::Disk>,
}

/// Check `a` and load what its syncs need (see [`Ready`]).
pub(crate) fn prepare(a: &Plan) -> crate::Result<Ready> {
    check_address("--to", &a.to, false)?;
    if !a.retry_wait.is_finite() || a.retry_wait < 0.0 {
        return Err(usage("--retry-wait must be a number of seconds >= 0"));
    }
    // Every cached key of this name (captures on several media): the one
    // whose capture id the target serves is chosen after the handshake.
    let dir = crate::keys::key_cache_dir(a.key_cache.clone())?;
    let mut keys = Vec::new();
    for k in crate::keys::cached_keys(&dir)?
        .into_iter()
        .filter(|k| k.name.eq_ignore_ascii_case(&a.name))
    {
        let key = DataKey::load_cache(&k.path, &k.name)
            .map_err(|e| usage(format!("key cache {}: {e}", k.path.display())))?;
        let id = DataKey::cached_capture_id(&k.path).map_err(|e| usage(format!("{e}")))?;
        keys.push((id, key));
    }
    if keys.is_empty() {
        return Err(usage(format!(
            "no usable data key for {} in the key cache {}: sync needs the key that `mgear capture` \
             cached on this host; run it where the capture ran, or pass --key-cache DIR \
             (`mgear keys list` shows the cached keys)",
            a.name,
            dir.display()
        )));
    }
    let (capture_id, key) = keys.remove(0);
    let signer = a
        .sign
        .as_deref()
        .map(crate::sitekey::read_signing_key)
        .transpose()?;
    let mut disk = crate::source::open(&a.source, a.dirty_bitmap.as_deref())?;
    // A qcow2 (VMDK, VHDX...) file given as the source was refused only for its size, "or
    // that disk shrank since": capture refuses it by its magic, and so does sync.
    crate::preflight::check_container(&mut *disk, &a.source)?;
    resolve(&a.to)?;
    let plan = source::Plan {
        name: a.name.clone(),
        key,
        bitmap: a.dirty_bitmap.clone(),
        rate: a.rate_limit,
        retries: a.retries,
        retry_wait: Duration::from_secs_f64(a.retry_wait),
        peer: a.to.clone(),
        capture_id,
        signer,
        other_keys: keys,
        force: a.force,
    };
    // An NBD export served by a `qemu-nbd` without --persistent goes away
    // with its first client: the connection opened here is the one the
    // first sync reads. A file or device is opened again by each sync.
    let disk = crate::spec::is_nbd(&a.source).then_some(disk);
    Ok(Ready { plan, disk })
}

/// Resolve `--to`'s host once before anything is read: a name that does not
/// resolve is not worth the reconnect loop (that is for connections that
/// drop), so it ends the command at once (exit 3; it may be the DNS).
fn resolve(to: &str) -> crate::Result<()> {
    use std::net::ToSocketAddrs;
    let hint = "check the host name in --to (`getent hosts HOST` asks the resolver this host \
                uses), then run again";
    match to.to_socket_addrs().map(|mut addrs| addrs.next().is_some()) {
        Ok(true) => Ok(()),
        Ok(false) => Err(coded_next(
            IO,
            format!("--to {to}: the host name resolves to no address"),
            hint,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
            Err(usage(format!("--to {to}: {e}: give HOST:PORT")))
        }
        Err(e) => Err(coded_next(
            IO,
            format!("--to {to}: cannot resolve the host name: {e}"),
            hint,
        )),
    }
}

/// Run one sync as `a` says; shared by `sync` and `cutover`.
pub fn run_sync(a: &Plan) -> crate::Result<SyncReport> {
    // Ctrl-C ends the session between chunks, saying so (it exited 130 in silence).
    crate::signals::install();
    run_ready(a, &mut prepare(a)?)
}

/// Run one sync of a [`prepare`]d plan.
pub(crate) fn run_ready(a: &Plan, ready: &mut Ready) -> crate::Result<SyncReport> {
    let mut disk = match ready.disk.take() {
        Some(d) => d,
        None => crate::source::open(&a.source, a.dirty_bitmap.as_deref())?,
    };
    let cpu0 = crate::progress::cpu_seconds();
    let started = Instant::now();
    let to = a.to.clone();
    let stats = source::run(&ready.plan, &mut disk, &mut || source::tcp(&to))?;
    let seconds = started.elapsed().as_secs_f64();
    let cpu_seconds = (crate::progress::cpu_seconds() - cpu0).max(0.0);
    Ok(SyncReport {
        command: "sync",
        name: a.name.clone(),
        source: disk.describe(),
        to: a.to.clone(),
        dirty_bitmap: a.dirty_bitmap.clone(),
        wire_bytes_per_s: stats.wire_bytes as f64 / seconds.max(1e-9),
        stats,
        seconds,
        rate_limit_bytes_per_s: a.rate_limit,
        cpu_seconds,
        cpu_share: cpu_seconds / seconds.max(1e-9),
    })
}

/// The human summary of a sync.
fn print_summary(r: &SyncReport) {
    let s = &r.stats;
    println!(
        "synced {} to {} in {:.2} s ({} attempt{}{})",
        r.name,
        r.to,
        r.seconds,
        s.attempts,
        if s.attempts == 1 { "" } else { "s" },
        match s.restarts {
            0 => String::new(),
            n => format!(
                "; {n} new session{} after the target's volume was written by another program",
                if n == 1 { "" } else { "s" }
            ),
        }
    );
    println!(
        "  source:     {} ({}, {} of {})",
        r.source,
        human_bytes(s.disk_size),
        crate::units::count(s.chunks, "chunk"),
        human_bytes(s.chunk_size as u64)
    );
    match &r.dirty_bitmap {
        Some(b) if s.bitmap_overruled => println!(
            "  considered: all {} chunks (bitmap {b} not trusted this time: the target could \
             not vouch that only syncs wrote its volume)",
            s.chunks_considered
        ),
        Some(b) => println!(
            "  considered: {} dirty in bitmap {b}",
            crate::units::count(s.chunks_considered, "chunk")
        ),
        None => println!(
            "  considered: all {} chunks (no dirty bitmap: every chunk is read and compared)",
            s.chunks_considered
        ),
    }
    println!(
        "  read:       {} in {:.2} s; skipped {}",
        human_bytes(s.bytes_read),
        s.read_seconds,
        human_bytes(s.bytes_skipped)
    );
    if r.dirty_bitmap.is_none() {
        println!(
            "              (a full read of this disk takes {:.2} s; an NBD source with --dirty-bitmap reads only changed ranges)",
            s.read_seconds
        );
    }
    println!(
        "  sent:       {} ({} of data, {} on the wire, {}/s)",
        crate::units::count(s.chunks_sent, "chunk"),
        human_bytes(s.chunk_bytes_sent),
        human_bytes(s.wire_bytes),
        human_bytes(r.wire_bytes_per_s as u64)
    );
    if let Some(l) = r.rate_limit_bytes_per_s {
        println!(
            "  rate limit: {}/s ({:.1} Mbit/s)",
            human_bytes(l as u64),
            l * 8.0 / 1e6
        );
    }
    println!(
        "  verified:   {}",
        match (s.verified, &r.dirty_bitmap) {
            (false, _) => "no".to_string(),
            (true, None) => "the target's chunk ids match the source's".to_string(),
            (true, Some(_)) if s.bitmap_overruled => {
                "the target's chunk ids match the source's (every chunk read)".to_string()
            }
            // Only what was read is proven; the rest is the bitmap's word, sampled.
            (true, Some(b)) => format!(
                "the target's chunk ids match the source's where read; the chunks bitmap {b} \
                 calls clean were not read (a sample of them matched the target)"
            ),
        }
    );
    println!(
        "  source cpu: {:.1}% of one core ({:.2} s user+sys over {:.2} s)",
        r.cpu_share * 100.0,
        r.cpu_seconds,
        r.seconds
    );
}

/// `mgear sync`.
pub fn sync(a: Plan) -> crate::Result<i32> {
    let r = run_sync(&a)?;
    if a.json || crate::output::json() {
        crate::output::emit(&r)?;
    } else {
        print_summary(&r);
    }
    Ok(OK)
}

#[cfg(test)]
mod tests;
