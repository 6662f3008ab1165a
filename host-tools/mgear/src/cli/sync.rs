//! `mgear serve`, `mgear sync` and `mgear cutover`'s flags, as [`sync::Serve`],
//! [`sync::Plan`] and [`sync::Cutover`].
use std::path::PathBuf;

use mgear::sync;
use mgear::units::parse_rate;

/// Arguments of `mgear serve`.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// The ingested volume to keep in sync: file:PATH (raw), dev:/dev/DEVICE or an NBD URL (a bare PATH is the file or device there).
    #[arg(long)]
    pub target: String,
    #[command(flatten)]
    pub medium: super::medium::Where,
    /// Capture name (the data key is unwrapped from its key slot).
    #[arg(long)]
    pub name: String,
    /// Target identity (secret key from `mgear keygen`).
    #[arg(long)]
    pub identity: Option<PathBuf>,
    /// Passphrase file (if the capture was made with one).
    #[arg(long, conflicts_with = "identity")]
    pub passphrase_file: Option<PathBuf>,
    /// Address to listen on (HOST:PORT; port 0 picks a free one, printed on stdout).
    #[arg(long, default_value = "127.0.0.1:7410")]
    pub listen: String,
    /// Exit after the first sync that completes.
    #[arg(long)]
    pub once: bool,
    /// Capture site public key (`site.pub` from `mgear keygen --signing`) whose signed
    /// syncs are accepted; repeatable. Other peers are refused.
    #[arg(long, value_name = "SITE.pub")]
    pub trust: Vec<PathBuf>,
    /// Accept unsigned syncs and unpinned signers (loudly logged): anyone with the
    /// capture's data key could then rewrite the volume.
    #[arg(long)]
    pub allow_untrusted: bool,
    /// Seconds a new connection has to prove the capture key and its origin.
    #[arg(long, default_value_t = 10.0)]
    pub handshake_timeout: f64,
    /// Seconds an authenticated connection may stay silent.
    #[arg(long, allow_hyphen_values = true, default_value_t = 120.0)]
    pub idle_timeout: f64,
    /// Connections served at once (more are told to retry).
    #[arg(long, allow_hyphen_values = true, default_value_t = 4, value_parser = super::at_least_one)]
    pub max_peers: usize,
    /// Serve a file volume no ingest or serve of this capture on this host recorded (one
    /// ingested elsewhere, or with another --state-dir, and copied here).
    #[arg(long)]
    pub force: bool,
}

/// Arguments of `mgear sync`.
#[derive(clap::Args, Debug, Clone)]
pub struct SyncArgs {
    /// Disk to read: a file, a block device, nbd://HOST:PORT/EXPORT or nbd+unix:///EXPORT?socket=PATH.
    #[arg(long)]
    pub source: String,
    /// Where `mgear serve` listens (HOST:PORT).
    #[arg(long)]
    pub to: String,
    /// Capture name.
    #[arg(long)]
    pub name: String,
    /// Key cache written by `mgear capture` [default: $XDG_STATE_HOME/mgear/keys or ~/.local/state/mgear/keys].
    #[arg(long)]
    pub key_cache: Option<PathBuf>,
    /// Read only the ranges this qemu dirty bitmap marks changed (NBD sources exported with `qemu-nbd -B NAME`).
    #[arg(long, value_name = "NAME")]
    pub dirty_bitmap: Option<String>,
    /// Hold the average rate on the wire, e.g. 10Mbit/s, 2MiB/s.
    #[arg(long, allow_hyphen_values = true)]
    pub rate_limit: Option<String>,
    /// Reconnect this many times after a dropped connection.
    // A negative number is taken as a value (said as invalid), not as an unknown option.
    #[arg(long, allow_hyphen_values = true, default_value_t = 5)]
    pub retries: u32,
    /// Seconds to wait before reconnecting.
    #[arg(long, allow_hyphen_values = true, default_value_t = 2.0)]
    pub retry_wait: f64,
    /// Print the summary as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Sign each session with this capture site key (`mgear keygen --signing`),
    /// so a target that pins the site (`serve --trust site.pub`) accepts it.
    #[arg(long, value_name = "SITE.key")]
    pub sign: Option<PathBuf>,
    /// Sync even when sampled chunks say the source is not the captured disk
    /// (the whole disk really was rewritten since the capture).
    #[arg(long)]
    pub force: bool,
}

/// Arguments of `mgear cutover`.
#[derive(clap::Args, Debug)]
pub struct CutoverArgs {
    #[command(flatten)]
    pub sync: SyncArgs,
    /// Shell command that quiesces the source (stop services, `fsfreeze -f /srv`); downtime starts here.
    #[arg(long)]
    pub quiesce: String,
    /// Shell command that brings the source back if the cutover fails after quiescing.
    #[arg(long)]
    pub resume: Option<String>,
    /// Volume to boot after the final sync: file:PATH, qcow2:PATH, dev:PATH or nbd://...
    #[arg(long)]
    pub boot_target: String,
    /// Regex on the serial console that proves the target booted.
    #[arg(long, default_value = "login:|MGEAR-BOOT-OK")]
    pub wait_for: String,
    /// Seconds to wait for the regex.
    #[arg(long, default_value_t = 300)]
    pub boot_timeout: u64,
    /// Skip the warm sync before quiescing (the warm sync, run while the source still runs, is what keeps the downtime short).
    #[arg(long)]
    pub no_presync: bool,
}

impl ServeArgs {
    /// The typed request.
    pub fn into_plan(self) -> sync::Serve {
        let a = self;
        sync::Serve {
            target: a.target,
            medium: a.medium.into(),
            name: a.name,
            identity: a.identity,
            passphrase_file: a.passphrase_file,
            listen: a.listen,
            once: a.once,
            trust: a.trust,
            allow_untrusted: a.allow_untrusted,
            handshake_timeout: a.handshake_timeout,
            idle_timeout: a.idle_timeout,
            max_peers: a.max_peers,
            force: a.force,
        }
    }
}

impl SyncArgs {
    /// The typed plan: the rate parsed (exit 2 on a bad one).
    pub fn into_plan(self) -> mgear::Result<sync::Plan> {
        let a = self;
        let rate_limit = a.rate_limit.as_deref().map(parse_rate).transpose()?;
        Ok(sync::Plan {
            source: a.source,
            to: a.to,
            name: a.name,
            key_cache: a.key_cache,
            dirty_bitmap: a.dirty_bitmap,
            rate_limit,
            retries: a.retries,
            retry_wait: a.retry_wait,
            json: a.json,
            sign: a.sign,
            force: a.force,
        })
    }
}

impl CutoverArgs {
    /// The typed request: the sync's plan parsed (exit 2 on a bad rate).
    pub fn into_plan(self) -> mgear::Result<sync::Cutover> {
        let a = self;
        Ok(sync::Cutover {
            sync: a.sync.into_plan()?,
            quiesce: a.quiesce,
            resume: a.resume,
            boot_target: a.boot_target,
            wait_for: a.wait_for,
            boot_timeout: a.boot_timeout,
            no_presync: a.no_presync,
        })
    }
}
