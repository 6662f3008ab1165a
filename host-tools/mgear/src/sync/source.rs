//! The source side (`mgear sync`): read the disk (all of it, or only the
//! chunks a qemu dirty bitmap marks), compare keyed ids with the target's,
//! and send the chunks that differ as the format's own sealed records
//! (`image_format::RecordSealer`: the capture writer's sealing with its
//! decode-back self-check), paced by a token bucket on bytes sent.
//!
//! A dropped connection is retried (`--retries`): the target's id list on
//! reconnect already reflects what it applied, and chunks whose id this run
//! already computed are not read again unless the target still lacks them.

use std::collections::HashMap;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use image_format::{layout, DataKey, RecordSealer};

use super::session::{self, IdKey, Role, Session};
use super::wire::{
    self, err, ty, Applied, Chunk, ChunkBody, Done, Hello, Ids, Proof, Refusal, Welcome, WireError,
};
use crate::exit::{coded, usage, FOUND, IO, USAGE};
use crate::ratelimit::RateLimiter;

/// The disk being synced: a capture source (`crate::source::open`), opened with the dirty
/// bitmap when `--dirty-bitmap` names one.
pub type Disk = Box<dyn crate::source::Source>;

/// What to sync and how.
pub struct Plan {
    pub name: String,
    pub key: DataKey,
    /// Only chunks dirty in this bitmap (NBD sources).
    pub bitmap: Option<String>,
    /// Bytes per second on the wire.
    pub rate: Option<f64>,
    /// Reconnect this many times after a dropped connection.
    pub retries: u32,
    pub retry_wait: Duration,
    /// Peer name for messages.
    pub peer: String,
    /// The capture id the key cache records, if it records one.
    pub capture_id: Option<[u8; 16]>,
    /// The capture site's key that signs each session (`--sign`).
    pub signer: Option<ed25519_dalek::SigningKey>,
    /// Keys of other captures of this name in the key cache (another
    /// medium's `web01`), with their ids: the one whose id the target
    /// serves is used.
    pub other_keys: Vec<(Option<[u8; 16]>, DataKey)>,
    /// Sync even when the sampled chunks say this disk is not the one the
    /// target holds (`--force`: the whole disk really was rewritten).
    pub force: bool,
}

impl Plan {
    /// The key for the capture the target serves: the cached key with that
    /// id, else a cache without an id line (the key proof decides).
    fn key_for(&self, served: &[u8; 16]) -> Option<&DataKey> {
        let all = std::iter::once((self.capture_id, &self.key))
            .chain(self.other_keys.iter().map(|(id, k)| (*id, k)));
        let mut fallback = None;
        for (id, k) in all {
            match id {
                Some(id) if id == *served => return Some(k),
                None if fallback.is_none() => fallback = Some(k),
                _ => {}
            }
        }
        fallback
    }
}

/// Chunks read to check that the source is the disk the target holds. Every non-zero chunk
/// of the volume counts, down to one: a small disk (a set's data disk, a 48 MiB disk in 16 MiB
/// chunks) deserves the check as much (a volume of zeros only gives none).
const IDENTITY_SAMPLES: usize = 16;

/// What a sync did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Stats {
    pub disk_size: u64,
    pub chunk_size: u32,
    pub chunks: u64,
    /// Chunks looked at: all of them, or the dirty ones.
    pub chunks_considered: u64,
    pub bytes_read: u64,
    pub bytes_skipped: u64,
    pub read_seconds: f64,
    pub chunks_sent: u64,
    /// Plaintext bytes of the chunks sent.
    pub chunk_bytes_sent: u64,
    /// Bytes put on the wire (frames, all messages).
    pub wire_bytes: u64,
    pub send_seconds: f64,
    pub attempts: u32,
    /// New sessions started because the target hashed its volume again (another program
    /// wrote it during a session): not counted in `attempts`.
    pub restarts: u32,
    /// The target's volume digest after the sync equals what the source expects.
    pub verified: bool,
    /// With `--dirty-bitmap`: every chunk was read and compared all the same, because the
    /// target could not vouch that only syncs wrote its volume.
    pub bitmap_overruled: bool,
    /// The chunks sent (their numbers): what the target's volume got from this sync, which
    /// an older copy of it lacks (`cutover` checks its boot target holds them).
    #[serde(skip)]
    pub sent: Vec<u64>,
    /// The capture the target serves (its WELCOME), once a session began.
    #[serde(skip)]
    pub capture_id: Option<[u8; 16]>,
}

/// Why an attempt failed.
enum Fail {
    /// The connection broke: reconnect and continue.
    Retry(crate::Error),
    /// The target refused or something local failed: stop.
    Fatal(crate::Error),
    /// The target hashed its volume again (another program wrote it during the session):
    /// start a new session at once, which gets the ids the volume holds now. Not a failure of
    /// the connection: it counts against [`MAX_RESTARTS`], not `--retries`.
    Restart(crate::Error),
    /// The target is serving as many connections as it takes (its slots may be held by
    /// connections that never authenticate, until its handshake timeout, 10 s by default):
    /// retried for up to [`BUSY_PATIENCE`] before it counts against `--retries`, which with
    /// the defaults gave up just as the slots came free.
    Busy(crate::Error),
}

/// How long a busy target is waited for before its refusals count as failed attempts.
const BUSY_PATIENCE: Duration = Duration::from_secs(60);

/// New sessions a sync starts after the target hashed its volume again before it gives up:
/// something that keeps writing the volume would otherwise keep the sync going forever.
const MAX_RESTARTS: u32 = 5;

/// A write to the target failed: the connection is gone (the serve stopped,
/// the network dropped it). Retried, and the message names the peer: a bare
/// "Broken pipe" does not say which connection broke.
fn lost(peer: &str) -> impl Fn(io::Error) -> Fail + '_ {
    move |e| {
        Fail::Retry(
            crate::Error::from(e).context(format!("lost the connection to {peer} while sending")),
        )
    }
}

/// A send failed because the target closed the connection: a target that ends a session
/// sends an ERROR first and closes, and the source, busy sending, meets the closed
/// connection before it reads the reason ("Broken pipe" hid "the volume was written by
/// another program"). The reason, when it arrived, replaces the broken pipe.
fn said_before_closing(f: Fail, r: &mut Box<dyn PeerRead>, s: &mut Session, peer: &str) -> Fail {
    let Fail::Retry(e) = f else {
        return f;
    };
    // Only a connection the peer closed: after a write timeout a read could wait as long.
    let closed = e.chain().any(|c| {
        c.downcast_ref::<io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            )
        })
    });
    if closed {
        r.expect_soon(Duration::from_secs(2));
        if let Ok((ty::ERROR, p)) = recv_sealed(r, s, peer) {
            return refused(&p, peer);
        }
    }
    Fail::Retry(e)
}

/// A transport to the target: a read half and a write half.
pub type Conn = (Box<dyn PeerRead>, Box<dyn Write + Send>);

/// The read half of a connection to the target.
pub trait PeerRead: Read + Send {
    /// Wait at most `d` for what is still to be read: after a send failed, what the target
    /// said before it closed is there at once, and a connection that merely broke must not
    /// hold the sync for the whole [`PEER_TIMEOUT`].
    fn expect_soon(&mut self, _d: Duration) {}
}

impl PeerRead for BufReader<Patient> {
    fn expect_soon(&mut self, d: Duration) {
        self.get_mut().limit = d;
    }
}

impl PeerRead for io::Empty {}

/// Longest wait for the target to answer or accept data.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(300);

/// How often a wait on the target looks at Ctrl-C.
const TICK: Duration = Duration::from_secs(2);

/// One half of the connection to the target, waiting at most `limit` for it to answer or to
/// take data, in [`TICK`]s, and ending a wait at Ctrl-C. A peer that closed its side and
/// stopped reading left a write blocked in the kernel: Ctrl-C only printed "stopping after the
/// work at hand" (the call restarts after the signal), and each attempt waited the whole
/// socket timeout.
pub struct Patient {
    s: TcpStream,
    limit: Duration,
}

impl Patient {
    /// Runs `io` until it does something, the limit passes (`TimedOut`) or Ctrl-C.
    fn wait<T>(&mut self, mut io: impl FnMut(&mut TcpStream) -> io::Result<T>) -> io::Result<T> {
        let start = std::time::Instant::now();
        loop {
            match io(&mut self.s) {
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    // Not `Interrupted`: `read_exact` and `write_all` retry that kind.
                    if crate::signals::stop_requested() {
                        return Err(io::Error::other("stopped by Ctrl-C"));
                    }
                    if start.elapsed() >= self.limit {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!(
                                "the target neither answered nor took data for {} s",
                                self.limit.as_secs()
                            ),
                        ));
                    }
                }
                r => return r,
            }
        }
    }
}

impl Read for Patient {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.wait(|s| s.read(buf))
    }
}

impl Write for Patient {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.wait(|s| s.write(buf))
    }
    fn flush(&mut self) -> io::Result<()> {
        self.wait(|s| s.flush())
    }
}

/// Connect to `HOST:PORT` over TCP.
pub fn tcp(to: &str) -> io::Result<Conn> {
    tcp_waiting(to, PEER_TIMEOUT)
}

/// [`tcp`] with another longest wait.
pub(crate) fn tcp_waiting(to: &str, limit: Duration) -> io::Result<Conn> {
    let s = TcpStream::connect(to)?;
    s.set_nodelay(true)?;
    // A target that stops answering is a dropped connection (retried), not a hang: each wait
    // is at most PEER_TIMEOUT, taken in ticks that look at Ctrl-C.
    s.set_read_timeout(Some(TICK))?;
    s.set_write_timeout(Some(TICK))?;
    let r = s.try_clone()?;
    Ok((
        Box::new(BufReader::with_capacity(
            256 * 1024,
            Patient { s: r, limit },
        )),
        Box::new(Patient { s, limit }),
    ))
}

/// State that survives reconnects.
struct Run<'a> {
    plan: &'a Plan,
    disk: &'a mut Disk,
    stats: Stats,
    /// Chunks to look at, once known (`None`: all).
    candidates: Option<Vec<u64>>,
    /// Keyed ids this run computed from the source.
    known: HashMap<u64, [u8; 32]>,
    limiter: Option<RateLimiter>,
    buf: Vec<u8>,
    /// The source was compared with the target's ids (first attempt only).
    identity_checked: bool,
    /// The target said its volume was written elsewhere (said once; with `--dirty-bitmap`
    /// every chunk is read from then on).
    every_chunk: bool,
}

/// Sync `disk` to the target reached by `connect`.
pub fn run(
    plan: &Plan,
    disk: &mut Disk,
    connect: &mut dyn FnMut() -> io::Result<Conn>,
) -> crate::Result<Stats> {
    let mut run = Run {
        plan,
        disk,
        stats: Stats::default(),
        candidates: None,
        known: HashMap::new(),
        limiter: None,
        buf: Vec::new(),
        identity_checked: false,
        every_chunk: false,
    };
    let mut restarts = 0;
    let mut busy_since: Option<std::time::Instant> = None;
    loop {
        run.stats.attempts += 1;
        let result = match connect() {
            Ok((r, w)) => run.attempt(r, w),
            Err(e) => Err(Fail::Retry(
                crate::Error::from(e).context(format!("cannot connect to {}", plan.peer)),
            )),
        };
        match result {
            Ok(()) => {
                // A source resized while it was read: what was sent and verified is the disk at
                // its old size, and the volume is not the source any more. It said "verified",
                // exit 0 (a read past a new end fails by itself; one before it, or growth, did
                // not).
                let was = run.disk.len();
                if let Some(now) = run.disk.size_now().filter(|now| *now != was) {
                    return Err(crate::exit::coded_hint(
                        IO,
                        format!(
                            "the source {} during the sync, from {was} to {now} bytes: the \
                             target volume holds the disk as read at {was} bytes, which is not \
                             the source now",
                            if now > was { "grew" } else { "shrank" }
                        ),
                        "a disk of a new size is not synced: capture it with --delta onto a \
                         medium and ingest that generation with --force, then serve and sync \
                         from there (SYNC.md); a sync of the disk at its old size goes on once \
                         it is that size again",
                    ));
                }
                return Ok(run.stats);
            }
            Err(Fail::Fatal(e)) => return Err(e),
            Err(Fail::Busy(e))
                if !crate::signals::stop_requested()
                    && busy_since
                        .get_or_insert_with(std::time::Instant::now)
                        .elapsed()
                        < BUSY_PATIENCE =>
            {
                run.stats.attempts -= 1;
                eprintln!(
                    "mgear sync: {e:#}; trying again in {:.0} s",
                    plan.retry_wait.as_secs_f64().max(1.0)
                );
                if crate::signals::pause(plan.retry_wait.max(Duration::from_secs(1))) {
                    return Err(stopped_sync());
                }
            }
            // Stopped while the target was busy: said as the stop it is (it read "gave up
            // after 60 s of a busy target" of a sync stopped after 3).
            Err(Fail::Busy(_)) if crate::signals::stop_requested() => return Err(stopped_sync()),
            // Waited for long enough: a failed attempt as any other.
            Err(Fail::Busy(e)) if run.stats.attempts > plan.retries => {
                return Err(coded(
                    IO,
                    format!(
                        "{e:#} (gave up after {} and {} s of a busy target; re-run to continue)",
                        attempts(run.stats.attempts),
                        BUSY_PATIENCE.as_secs()
                    ),
                ));
            }
            Err(Fail::Busy(e)) => {
                eprintln!("mgear sync: {e:#}; trying again");
                if crate::signals::pause(plan.retry_wait) {
                    return Err(stopped_sync());
                }
            }
            Err(Fail::Restart(e)) if restarts >= MAX_RESTARTS => {
                return Err(crate::exit::coded_hint(
                    IO,
                    format!(
                        "{e:#}: {} times in a row; something keeps writing the target's volume",
                        restarts + 1
                    ),
                    "at the target, stop whatever writes the volume serve keeps (a mount, a \
                     running VM, a copy, fsck): only serve may write it; then run the sync \
                     again, which puts back every chunk that differs",
                ))
            }
            Err(Fail::Restart(e)) => {
                restarts += 1;
                run.stats.restarts = restarts;
                run.stats.attempts -= 1;
                eprintln!("mgear sync: {e:#}; starting a new session");
            }
            // Ctrl-C during a wait on the target: stopped, not a dropped connection to retry.
            Err(Fail::Retry(_)) if crate::signals::stop_requested() => return Err(stopped_sync()),
            Err(Fail::Retry(e)) if run.stats.attempts > plan.retries => {
                // The next step names the serve (the generic hint said to reconnect a path).
                return Err(crate::exit::coded_hint(
                    IO,
                    format!(
                        "{e:#} (gave up after {}; re-run to continue)",
                        attempts(run.stats.attempts)
                    ),
                    format!(
                        "check that `mgear serve` of {} still runs at the target and listens at \
                         {} (start it again if it stopped: it keeps what it applied), then run \
                         the same command again",
                        plan.name, plan.peer
                    ),
                ));
            }
            Err(Fail::Retry(e)) => {
                eprintln!(
                    "mgear sync: {e:#}; reconnecting in {:.0} s (attempt {} of {})",
                    plan.retry_wait.as_secs_f64(),
                    run.stats.attempts + 1,
                    plan.retries + 1
                );
                if crate::signals::pause(plan.retry_wait) {
                    return Err(stopped_sync());
                }
            }
        }
    }
}

/// A sync stopped by Ctrl-C or SIGTERM (exit 3).
fn stopped_sync() -> crate::Error {
    coded(
        IO,
        "stopped; whatever the target applied before the stop stays applied, and the same \
         command continues from there",
    )
}

/// "1 attempt", "3 attempts".
fn attempts(n: u32) -> String {
    format!("{n} attempt{}", if n == 1 { "" } else { "s" })
}

/// Turn an ERROR frame from the target into a fatal error with the right exit code.
fn refused(p: &[u8], peer: &str) -> Fail {
    match Refusal::decode(p) {
        // A full target frees a slot soon: like a dropped connection, retry.
        Ok(Refusal {
            code: err::BUSY,
            message: m,
        }) => Fail::Busy(crate::err!("the target {peer} is busy: {m}")),
        // The target hashed its volume again: a new session gets its ids.
        Ok(Refusal {
            code: err::REHASHED,
            message: m,
        }) => Fail::Restart(crate::err!("the target {peer} ended the session: {m}")),
        // The sizes differ (a source of another size, or a volume resized under serve): the
        // generic usage hint ("check the arguments and key files") pointed elsewhere.
        Ok(Refusal {
            code: err::SIZE,
            message: m,
        }) => Fail::Fatal(crate::exit::coded_hint(
            USAGE,
            format!("the target {peer} refused the sync: {m}"),
            "nothing was sent: the source and the volume serve keeps must both be the size of \
             the captured disk; the message says which one differs and what to do",
        )),
        // Not data that failed to check out: who signed the session (exit 1, as an ingest of
        // a capture signed by no pinned key).
        Ok(Refusal {
            code: err::UNTRUSTED,
            message: m,
        }) => Fail::Fatal(crate::exit::coded_hint(
            FOUND,
            format!("the target {peer} refused the sync: {m}"),
            "nothing was applied: sign the session with the capture site key the target pins \
             (`mgear sync --sign SITE.key`), or have the target pin this site's key (`mgear \
             serve --trust SITE.pub`)",
        )),
        Ok(Refusal { code, message: m }) => {
            let exit = match code {
                err::BAD_RECORD | err::UNTRUSTED => FOUND,
                err::IO | err::DONE_ONCE => IO,
                _ => USAGE,
            };
            Fail::Fatal(coded(
                exit,
                format!("the target {peer} refused the sync: {m}"),
            ))
        }
        Err(e) => Fail::Fatal(coded(USAGE, format!("{peer}: {e}"))),
    }
}

/// Receive the next message after the handshake: a SEALED frame that opens
/// as the next of this session (or a clear ERROR, for a refusal the target
/// could not seal).
fn recv_sealed(r: &mut impl Read, s: &mut Session, peer: &str) -> Result<(u8, Vec<u8>), Fail> {
    let (t, p) = recv(r, peer)?;
    match t {
        ty::SEALED => s.open(&p).ok_or_else(|| {
            Fail::Fatal(coded(
                FOUND,
                format!(
                    "a sealed frame from {peer} does not authenticate: something between source \
                     and target altered the session"
                ),
            ))
        }),
        ty::ERROR => Ok((t, p)),
        other => Err(Fail::Fatal(coded(
            USAGE,
            format!(
                "{peer} sent {} in clear after the handshake: not a MotionGear sync target",
                wire::type_name(other)
            ),
        ))),
    }
}

/// Receive a frame; a protocol mismatch is fatal, a broken connection is not.
fn recv(r: &mut impl Read, peer: &str) -> Result<(u8, Vec<u8>), Fail> {
    wire::recv(r, peer).map_err(|e| {
        if e.is_transport() {
            Fail::Retry(e.into())
        } else {
            Fail::Fatal(coded(USAGE, e.to_string()))
        }
    })
}

/// Tell the serve why the session ends here, the source's side giving up after the
/// handshake (best effort: the connection may be gone): its log read as a connection that
/// was lost, on a Ctrl-C, a source that failed to read, or a refused sample.
fn tell_gave_up(w: &mut impl Write, s: &mut Session, f: &Fail) {
    if let Fail::Fatal(e) = f {
        let p = Refusal::new(err::GAVE_UP, format!("{e:#}")).encode();
        if let Ok(sealed) = s.seal(ty::ERROR, &p) {
            let _ = wire::send(w, ty::SEALED, &sealed).and_then(|_| w.flush());
        }
    }
}

impl Run<'_> {
    /// Seal message `t` and send it.
    fn send_sealed(
        &mut self,
        w: &mut impl Write,
        s: &mut Session,
        t: u8,
        payload: &[u8],
    ) -> Result<(), Fail> {
        let sealed = s.seal(t, payload).map_err(Fail::Fatal)?;
        self.send(w, ty::SEALED, &sealed)
    }

    fn send(&mut self, w: &mut impl Write, t: u8, payload: &[u8]) -> Result<(), Fail> {
        let f = wire::frame(t, payload);
        if let Some(l) = &mut self.limiter {
            l.acquire(f.len() as u64);
        }
        let started = Instant::now();
        w.write_all(&f).map_err(lost(&self.plan.peer))?;
        self.stats.send_seconds += started.elapsed().as_secs_f64();
        self.stats.wire_bytes += f.len() as u64;
        Ok(())
    }

    /// With `--dirty-bitmap` only the chunks the bitmap marks are read: a bitmap created after
    /// the target's copy was made (or cleared since) misses changes, and the sync reported a
    /// target that differs from the source "verified" (the digest covers what was sent).
    /// Up to 32 chunks the bitmap calls clean (64 MiB at most), spread over the disk, are read
    /// first and compared with the target's by keyed id; one that differs refuses the sync
    /// (exit 2) before anything is sent, as `capture --delta --dirty-bitmap` does. A sample,
    /// not a proof: the bitmap must be as old as the target's copy.
    fn check_clean_sample(
        &mut self,
        id_key: &image_format::ChunkIdKey,
        ids: &[[u8; 32]],
        dirty: &[u64],
        size: u64,
        chunk_size: u32,
        bitmap: &str,
    ) -> Result<(), Fail> {
        let chunk = u64::from(chunk_size.max(1));
        let clean: Vec<u64> = (0..ids.len() as u64)
            .filter(|i| dirty.binary_search(i).is_err())
            .collect();
        let mut buf = vec![0u8; chunk as usize];
        for index in crate::preflight::spread_sample(&clean, chunk) {
            let len = layout::chunk_len(size, chunk_size, index) as usize;
            let data = &mut buf[..len];
            self.disk
                .read_exact_at(index * chunk, data)
                .map_err(Fail::Fatal)?;
            if id_key.id(data) != ids[index as usize] {
                return Err(Fail::Fatal(usage(format!(
                    "--dirty-bitmap {bitmap}: the bitmap calls chunk {index} (disk bytes {}..{}) \
                     unchanged, but it reads differently from the target's copy: the bitmap \
                     misses changes (it was created after the target's copy was made, or was \
                     cleared since), or the disk changes under the sync (export a snapshot). \
                     A sync that trusted it would leave the target unlike the source; nothing \
                     was sent. Sync without --dirty-bitmap (it reads the whole disk), and \
                     create the bitmap before the copy the next sync builds on",
                    index * chunk,
                    index * chunk + len as u64,
                ))));
            }
        }
        Ok(())
    }

    /// Before sending anything: read a few chunks the target holds data
    /// for and compare their keyed ids with the target's. None matching means this
    /// is not the disk that was captured (a wrong `--source`): refuse,
    /// rather than overwrite the volume and report it "verified".
    fn check_identity(
        &mut self,
        id_key: &IdKey,
        ids: &[[u8; 32]],
        candidates: &[u64],
        size: u64,
        chunk_size: u32,
        name: &str,
    ) -> Result<(), Fail> {
        let mut zero_ids: HashMap<u32, [u8; 32]> = HashMap::new();
        let mut pool = Vec::new();
        for &index in candidates {
            let Some(&have) = ids.get(index as usize) else {
                continue;
            };
            let len = layout::chunk_len(size, chunk_size, index);
            let zero = *zero_ids
                .entry(len)
                .or_insert_with(|| id_key.id(&vec![0u8; len as usize]));
            if have != zero {
                pool.push(index);
            }
        }
        if pool.is_empty() {
            return Ok(());
        }
        let n = pool.len().min(IDENTITY_SAMPLES);
        let mut matched = 0;
        let mut buf = std::mem::take(&mut self.buf);
        for k in 0..n {
            let index = pool[k * (pool.len() - 1) / (n - 1).max(1)];
            let len = layout::chunk_len(size, chunk_size, index) as usize;
            buf.resize(len, 0);
            self.disk
                .read_exact_at(index * u64::from(chunk_size), &mut buf[..len])
                .map_err(Fail::Fatal)?;
            let id = id_key.id(&buf[..len]);
            if !self.known.contains_key(&index) {
                self.stats.bytes_read += len as u64;
            }
            self.known.insert(index, id);
            if id == ids[index as usize] {
                matched += 1;
            }
        }
        self.buf = buf;
        if matched == 0 {
            // A disk of a few chunks changed in each of them reads as another disk: said, so a
            // 1-chunk disk changed by one byte is not taken for the wrong disk.
            let few = match n < IDENTITY_SAMPLES {
                true => format!(
                    " (the volume holds data in only {}: a disk that changed in each of \
                     them since the capture reads the same as another disk)",
                    crate::units::count(n as u64, "chunk")
                ),
                false => String::new(),
            };
            return Err(Fail::Fatal(crate::exit::coded_hint(
                FOUND,
                format!(
                    "{} does not look like the disk captured as {name}: none of {n} sampled chunks \
                     matches the volume the target {} serves{few}, so nothing was sent. Either \
                     --source is the wrong disk, or that serve's --target is not the volume \
                     ingested from {name} (it holds another disk): check both; if the whole disk \
                     really was rewritten since the capture, pass --force",
                    self.disk.describe(),
                    self.plan.peer,
                ),
                "nothing was sent: fix --source (or the serve's --target), then run the same \
                 command again",
            )));
        }
        Ok(())
    }

    fn attempt(&mut self, mut r: Box<dyn PeerRead>, w: Box<dyn Write + Send>) -> Result<(), Fail> {
        let peer = self.plan.peer.clone();
        let name = self.plan.name.clone();
        let mut w = BufWriter::with_capacity(64 * 1024, w);
        let size = self.disk.len();
        let source_nonce = session::nonce().map_err(Fail::Fatal)?;
        let hello = Hello {
            name: name.clone(),
            size,
            nonce: source_nonce,
        }
        .encode();
        self.send(&mut w, ty::HELLO, &hello)?;
        w.flush().map_err(lost(&peer))?;

        let (t, welcome) = recv(&mut r, &peer)?;
        let p = &welcome;
        match t {
            ty::WELCOME => {}
            ty::ERROR => return Err(refused(p, &peer)),
            other => {
                return Err(Fail::Fatal(coded(
                    USAGE,
                    format!(
                        "{peer} answered HELLO with {}: not a MotionGear sync target",
                        wire::type_name(other)
                    ),
                )))
            }
        }
        let fatal = |e: crate::Error| Fail::Fatal(coded(USAGE, format!("{peer}: {e:#}")));
        let malformed = |e: WireError| fatal(e.into());
        let Welcome {
            capture_id,
            chunk_size,
            volume_size: vol_size,
            chunk_count: count,
            nonce: target_nonce,
            proof,
        } = Welcome::decode(p).map_err(malformed)?;
        let key = self.plan.key_for(&capture_id).cloned();
        if let (None, Some(mine)) = (&key, self.plan.capture_id) {
            let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
            return Err(Fail::Fatal(crate::exit::coded_hint(
                FOUND,
                format!(
                    "the target serves capture {} of {name}, but this host captured {} under that \
                     name (key cache): refusing to sync this disk over a different capture",
                    hex(&capture_id),
                    hex(&mine)
                ),
                "nothing was sent and no data is damaged: the target holds another capture of \
                 that name. Sync to the serve of the capture this host made (`mgear keys list` \
                 shows its capture id), or have the target ingest and serve that capture",
            )));
        }
        let Some(key) = key else {
            return Err(Fail::Fatal(usage(format!(
                "no cached data key opens the target's capture of {name}"
            ))));
        };
        if vol_size != size {
            return Err(fatal(crate::err!(
                "the target volume is {vol_size} bytes, the source {size}: sync cannot resize"
            )));
        }
        let mut s = Session::new(
            &key,
            &capture_id,
            &source_nonce,
            &target_nonce,
            Role::Source,
        );
        if s.proof("target", &name) != blake3::Hash::from_bytes(proof) {
            let m = format!(
                "the data key in the key cache for {name} does not open the target's capture {name} \
                 (a key cache from another capture, or the target ingested a different capture of \
                 that name; or the handshake was altered on its way: a sync over a direct \
                 connection tells, before any key is forgotten)"
            );
            let _ = wire::send(
                &mut w,
                ty::ERROR,
                &Refusal::new(err::WRONG_KEY, &m).encode(),
            )
            .and_then(|_| w.flush());
            return Err(Fail::Fatal(coded(USAGE, m)));
        }
        self.stats.capture_id = Some(capture_id);
        let id_key = IdKey::derive(&key, &capture_id);
        let mut records = RecordSealer::new(
            &key,
            capture_id,
            session::record_place(&source_nonce, &target_nonce),
            chunk_size,
            size,
        )
        .map_err(|e| fatal(e.into()))?;
        let proof = Proof {
            proof: *s.proof("source", &name).as_bytes(),
            signed: self.plan.signer.as_ref().map(|k| {
                use ed25519_dalek::Signer;
                let m = session::signed_message(&session::transcript(&hello, &welcome));
                (k.verifying_key().to_bytes(), k.sign(&m).to_bytes())
            }),
        };
        self.send_sealed(&mut w, &mut s, ty::PROOF, &proof.encode())?;
        w.flush().map_err(lost(&peer))?;

        let written_elsewhere = match recv_sealed(&mut r, &mut s, &peer)? {
            (ty::VOLUME, p) => {
                wire::VolumeState::decode(&p)
                    .map_err(malformed)?
                    .written_elsewhere
            }
            (ty::ERROR, p) => return Err(refused(&p, &peer)),
            (other, _) => {
                return Err(fatal(crate::err!(
                    "expected VOLUME, got {}",
                    wire::type_name(other)
                )))
            }
        };
        let mut ids: Vec<[u8; 32]> = Vec::new();
        while (ids.len() as u64) < count {
            let (t, p) = recv_sealed(&mut r, &mut s, &peer)?;
            match t {
                ty::IDS => {}
                ty::ERROR => return Err(refused(&p, &peer)),
                other => {
                    return Err(fatal(crate::err!(
                        "expected IDS, got {}",
                        wire::type_name(other)
                    )))
                }
            }
            let part = Ids::decode(&p).map_err(malformed)?;
            let (first, n) = (part.first, part.ids.len() as u64);
            if first != ids.len() as u64 || n > count - first {
                return Err(fatal(crate::err!(
                    "IDS frame for chunks {first}..{} out of order",
                    first.saturating_add(n)
                )));
            }
            ids.extend(part.ids);
        }

        self.stats.disk_size = size;
        self.stats.chunk_size = chunk_size;
        self.stats.chunks = count;
        if written_elsewhere && !self.every_chunk {
            if let Some(bitmap) = &self.plan.bitmap {
                // The target cannot vouch that only syncs wrote its volume: a bitmap of the
                // source's writes cannot say what anything else changed there. (Without a
                // bitmap every chunk is compared anyway.)
                self.every_chunk = true;
                self.stats.bitmap_overruled = true;
                self.candidates = Some((0..count).collect());
                eprintln!(
                    "mgear sync: the target cannot vouch that only syncs wrote its volume since \
                     the last sync that compared every chunk (another program wrote it, or this \
                     serve is the first to watch it): --dirty-bitmap {bitmap} cannot say what \
                     that changed, so every chunk is read and compared this session"
                );
            }
        }
        if self.candidates.is_none() {
            self.candidates = Some(match self.disk.dirty_chunks(chunk_size) {
                Ok(Some(dirty)) => dirty,
                Ok(None) => (0..count).collect(),
                Err(e) => return Err(Fail::Fatal(e)),
            });
        }
        if self.limiter.is_none() {
            self.limiter = self
                .plan
                .rate
                .map(|rate| RateLimiter::new(rate, chunk_size as u64));
        }
        let candidates = self.candidates.clone().unwrap_or_default();
        // With a dirty bitmap the check is skipped: reading clean ranges is
        // what changed-block tracking avoids, and the bitmap itself belongs
        // to the captured disk's image (another disk does not export it).
        if !self.identity_checked && !self.plan.force && self.plan.bitmap.is_none() {
            if let Err(f) = self.check_identity(&id_key, &ids, &candidates, size, chunk_size, &name)
            {
                tell_gave_up(&mut w, &mut s, &f);
                return Err(f);
            }
        }
        if !self.identity_checked && !self.plan.force {
            if let Some(bitmap) = self.plan.bitmap.clone() {
                self.check_clean_sample(&id_key, &ids, &candidates, size, chunk_size, &bitmap)?;
            }
        }
        self.identity_checked = true;
        self.stats.chunks_considered = candidates.len() as u64;
        let mut expected = ids.clone();
        let mut seq = 0u64;
        self.buf.resize(chunk_size as usize, 0);
        for &index in &candidates {
            // Ctrl-C: the session ends here; the target keeps what it applied.
            if crate::signals::stop_requested() {
                let f = Fail::Fatal(stopped_sync());
                tell_gave_up(&mut w, &mut s, &f);
                return Err(f);
            }
            let Some(have) = usize::try_from(index)
                .ok()
                .and_then(|i| ids.get(i))
                .copied()
            else {
                return Err(Fail::Fatal(usage(format!(
                    "dirty chunk {index} is past the end of the disk"
                ))));
            };
            if self.known.get(&index) == Some(&have) {
                continue;
            }
            let len = layout::chunk_len(size, chunk_size, index);
            let mut buf = std::mem::take(&mut self.buf);
            let data = &mut buf[..len as usize];
            let started = Instant::now();
            let read = self.disk.read_exact_at(index * chunk_size as u64, data);
            self.stats.read_seconds += started.elapsed().as_secs_f64();
            if let Err(e) = read {
                let f = Fail::Fatal(e);
                tell_gave_up(&mut w, &mut s, &f);
                return Err(f);
            }
            if !self.known.contains_key(&index) {
                self.stats.bytes_read += len as u64;
            }
            let id = id_key.id(data);
            self.known.insert(index, id);
            if id != have {
                let encoded = records
                    .encoder()
                    .encode(index, data)
                    .map_err(|e| Fail::Fatal(e.into()))?;
                let body = if encoded.is_zero() {
                    ChunkBody::Zero
                } else {
                    ChunkBody::Record(records.seal(&encoded).map_err(|e| Fail::Fatal(e.into()))?)
                };
                seq += 1;
                let chunk = Chunk {
                    index,
                    chunk_id: id,
                    body,
                };
                if let Err(f) = self.send_sealed(&mut w, &mut s, ty::CHUNK, &chunk.encode()) {
                    return Err(said_before_closing(f, &mut r, &mut s, &peer));
                }
                self.stats.chunks_sent += 1;
                self.stats.sent.push(index);
                self.stats.chunk_bytes_sent += len as u64;
                if let Some(slot) = usize::try_from(index)
                    .ok()
                    .and_then(|i| expected.get_mut(i))
                {
                    *slot = id;
                }
            }
            self.buf = buf;
        }
        self.stats.bytes_skipped = size.saturating_sub(self.stats.bytes_read);
        let digest = session::volume_digest(size, chunk_size, &expected);
        let done = Done { sent: seq, digest };
        if let Err(f) = self
            .send_sealed(&mut w, &mut s, ty::DONE, &done.encode())
            .and_then(|_| w.flush().map_err(lost(&peer)))
        {
            return Err(said_before_closing(f, &mut r, &mut s, &peer));
        }
        let (t, p) = recv_sealed(&mut r, &mut s, &peer)?;
        match t {
            ty::APPLIED => {}
            ty::ERROR => return Err(refused(&p, &peer)),
            other => {
                return Err(fatal(crate::err!(
                    "expected APPLIED, got {}",
                    wire::type_name(other)
                )))
            }
        }
        let theirs = Applied::decode(&p).map_err(malformed)?.digest;
        if theirs != digest {
            return Err(Fail::Fatal(coded(
                FOUND,
                "after the sync the target volume's chunk ids differ from the source's \
                 (the volume changed on the target during the sync?): run the sync again",
            )));
        }
        self.stats.verified = true;
        Ok(())
    }
}
