//! The boot proof, written once for every boot driver.
//!
//! A driver (local QEMU, a libvirt domain, an OpenStack Nova server) implements
//! only [`Guest`]: start the machine, hand over what its console printed, say
//! whether it is still running, stop it. [`prove_boot`] owns everything else
//! every driver must agree on: the console text (escape sequences removed,
//! the last 256 KiB kept), the wait for the regex, ending at once when the
//! firmware says nothing is bootable, the deadline, the outcome and the
//! [`BootReport`]. A boot counts only when the regex appears on the console
//! before the deadline.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::boot::{
    clean_console, nothing_bootable, nothing_bootable_detail, BootReport, Bus, Firmware, Outcome,
};
use crate::{BootError, Result};

/// Console text kept in the report.
pub(crate) const LOG_CAP: usize = 256 * 1024;

/// Whole consoles of the firmware on a disk with nothing to boot (SeaBIOS, and OVMF until its
/// shell) as `mgear boot` starts them under QEMU, `|` standing for a line break: what the
/// firmware prints whatever the disk holds, so no `--wait-for` may match it, line by line
/// (anchored patterns) or whole (patterns across lines).
const FIRMWARE_CONSOLES: [&str; 2] = [
    "SeaBIOS (version 1.16.2-debian-1.16.2-1)|Booting from Hard Disk...|Boot failed: not a \
     bootable disk||Booting from Floppy...|Boot failed: could not read the boot disk||Booting \
     from DVD/CD...|Boot failed: Could not read from CDROM (code 0003)|No bootable device.  \
     Retrying in 60 seconds.",
    "BdsDxe: failed to load Boot0001 \"UEFI QEMU DVD-ROM QM00003 \" from \
     PciRoot(0x0)/Pci(0x1,0x1)/Ata(Secondary,Master,0x0): Not Found|BdsDxe: failed to load \
     Boot0002 \"UEFI Misc Device\" from PciRoot(0x0)/Pci(0x3,0x0): Not Found|BdsDxe: loading \
     Boot0003 \"EFI Internal Shell\" from Fv(7CB8BDC9-F8EB-4F34-AAEA-3EE4AF6516A1)/\
     FvFile(7C04A583-9E3E-4F1C-AD65-E05268D0B4D1)|BdsDxe: starting Boot0003 \"EFI Internal \
     Shell\" from Fv(7CB8BDC9-F8EB-4F34-AAEA-3EE4AF6516A1)/\
     FvFile(7C04A583-9E3E-4F1C-AD65-E05268D0B4D1)|UEFI Interactive Shell v2.2|EDK II|UEFI \
     v2.70 (EDK II, 0x00010000)|Press ESC in 5 seconds to skip startup.nsh or any other key to \
     continue.|Shell> ",
];

/// What proves the boot: a regex on the console, and how long to wait for it.
#[derive(Debug, Clone)]
pub struct Expectation {
    wait_for: regex::Regex,
    timeout: Duration,
    /// Asked between console reads (at least every [`STOP_POLL`]): `true` ends the watch.
    stop: Option<fn() -> bool>,
}

/// How often a watch with a stop hook asks it.
const STOP_POLL: Duration = Duration::from_millis(250);

impl Expectation {
    /// `wait_for` must be a valid regex; it is checked here, before any machine starts.
    pub fn new(wait_for: &str, timeout: Duration) -> Result<Self> {
        let wait_for = regex::Regex::new(wait_for)
            .map_err(|e| BootError::Usage(format!("--wait-for is not a valid regex: {e}")))?;
        // One that matches nothing at all (`''`, `.*`) "proved" an all-zero disk booted.
        if wait_for.is_match("") {
            return Err(BootError::Usage(format!(
                "--wait-for {:?} matches an empty console, so it proves nothing: give text \
                 only the booted guest prints (a login prompt, a marker)",
                wait_for.as_str()
            )));
        }
        // The firmware prints on the same console before any guest runs: a pattern that
        // matches its lines ("SeaBIOS", "Boot") "proved" a disk with nothing on it booted.
        let transcripts = FIRMWARE_CONSOLES.map(|c| c.replace('|', "\n"));
        if let Some(line) = FIRMWARE_CONSOLES
            .iter()
            .flat_map(|c| c.split('|'))
            .chain(transcripts.iter().map(String::as_str))
            .find(|l| wait_for.is_match(l))
        {
            return Err(BootError::Usage(format!(
                "--wait-for {:?} matches what the firmware itself prints before any guest runs \
                 ({line:?}), so it proves nothing: give text only the booted guest prints (a \
                 login prompt, a marker)",
                wait_for.as_str()
            )));
        }
        Ok(Expectation {
            wait_for,
            timeout,
            stop: None,
        })
    }

    /// The same with a stop hook ([`crate::BootSpec::stop`]): the watch asks it at least every
    /// quarter second and, once it says so, stops the guest and ends with
    /// [`BootError::Stopped`].
    pub fn with_stop(mut self, stop: Option<fn() -> bool>) -> Self {
        self.stop = stop;
        self
    }

    fn stopped(&self) -> bool {
        self.stop.is_some_and(|s| s())
    }

    /// The regex as given.
    pub fn wait_for(&self) -> &str {
        self.wait_for.as_str()
    }

    /// The deadline, counted from the moment the machine runs.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

/// What a guest's console gave in one [`Guest::console`] call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleRead {
    /// Bytes appended to the console since the last call (a cut escape
    /// sequence or UTF-8 character is completed by the next read).
    Bytes(Vec<u8>),
    /// The whole console as the driver sees it now (a polled log that may lose
    /// its front): it replaces the text kept so far when it is at least as long.
    Whole(Vec<u8>),
    /// Nothing new within the wait.
    Nothing,
    /// The console stream ended (the machine is gone): [`Guest::state`] says how.
    Ended,
}

/// Whether the machine still runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestState {
    /// Still running: keep watching.
    Running,
    /// The guest stopped by itself (power-off, reboot); `how` says it in
    /// words ("the guest powered off or rebooted").
    Stopped {
        /// The stop in words, for the report.
        how: String,
    },
    /// The machine itself failed (the hypervisor exited with an error, the
    /// domain crashed); `detail` says what failed and its log.
    Failed {
        /// What failed, for the report.
        detail: String,
    },
}

/// How starting the machine went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// The machine runs; its console can be watched.
    Running,
    /// The machine never ran: the attempt ends with `outcome` (the hypervisor
    /// refused it, the cloud did not build the server in time).
    NotRunning {
        /// [`Outcome::QemuFailed`] or [`Outcome::TimedOut`].
        outcome: Outcome,
        /// Why, for the report.
        detail: String,
    },
}

/// The parts of the report the driver knows: where and how the machine ran.
/// [`BootReport`] holds it flattened, so the report's JSON carries these
/// fields at its top level (`subject` and `console` only phrase the outcome's
/// detail and stay out of it).
#[derive(Debug, Clone, Serialize)]
pub struct Setup {
    /// Driver name ("local-qemu", "libvirt", "openstack-nova").
    pub driver: String,
    /// The volume.
    pub target: String,
    /// Firmware used (resolved from auto).
    pub firmware: Firmware,
    /// Why that firmware.
    pub firmware_reason: String,
    /// Bus used (resolved from auto).
    pub bus: Bus,
    /// Why that bus.
    pub bus_reason: String,
    /// How the machine was started (QEMU argv, virsh command, API request); empty, and left
    /// out of the JSON, when nothing was started (a disk BIOS would hang on).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Who prints, in the report's words ("guest", "server 1f2e...").
    #[serde(skip)]
    pub subject: String,
    /// Where it prints ("the serial console", "the console of server 1f2e...").
    #[serde(skip)]
    pub console: String,
}

/// One machine booting a volume, as a boot driver runs it. Everything else
/// about proving the boot is [`prove_boot`]'s.
pub trait Guest {
    /// Start the machine. `Err`: the attempt could not be made (a tool is
    /// missing, an API refused the request); a machine that was tried and did
    /// not run is `Ok(Start::NotRunning)`.
    fn start(&mut self) -> Result<Start>;
    /// What the console printed since the last call, waiting at most `wait`
    /// for something new (a polled console waits at most one poll interval).
    fn console(&mut self, wait: Duration) -> Result<ConsoleRead>;
    /// Whether the machine still runs (asked after every console read).
    fn state(&mut self) -> Result<GuestState>;
    /// Stop the machine (or leave it running, if the driver was asked to keep
    /// it) and release what it held. Called once, on every path after a start.
    fn stop(&mut self);
    /// The hypervisor's own log (QEMU's stderr, libvirt's domain log), read after [`stop`](Self::stop).
    fn log(&mut self) -> String {
        String::new()
    }
    /// Where and how the machine ran (asked after [`stop`](Self::stop)).
    fn setup(&self) -> Setup;
    /// How long to let the matched line finish after the match, for the log
    /// only: a stream gives the rest of the line at once, a polled console
    /// would cost another request.
    fn grace(&self) -> Duration {
        Duration::ZERO
    }
}

/// The serial console as clean text, built incrementally from what the guest prints.
#[derive(Default)]
pub(crate) struct Console {
    /// Bytes not yet cleaned: an escape sequence or UTF-8 character cut by a read.
    pending: Vec<u8>,
    /// Cleaned text; the front is dropped beyond twice [`LOG_CAP`].
    text: String,
    /// How far the regex has searched.
    searched: usize,
}

/// Length of `b` up to an incomplete escape sequence or UTF-8 character at its end.
fn complete_prefix(b: &[u8]) -> usize {
    let mut cut = b.len();
    if let Some(esc) = b.iter().rposition(|&c| c == 0x1b) {
        let rest = &b[esc + 1..];
        let complete = match rest.first() {
            None => false,
            Some(b'[') => rest[1..]
                .iter()
                .any(|c| c.is_ascii_alphabetic() || *c == b'~'),
            Some(b'(' | b')') => rest.len() >= 2,
            Some(_) => true,
        };
        if !complete {
            cut = esc;
        }
    }
    match std::str::from_utf8(&b[..cut]) {
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        _ => cut,
    }
}

impl Console {
    pub(crate) fn push(&mut self, chunk: &[u8]) {
        self.pending.extend_from_slice(chunk);
        let cut = complete_prefix(&self.pending);
        let done: Vec<u8> = self.pending.drain(..cut).collect();
        self.append(&done);
    }

    /// A polled console's whole text: kept when it is at least as long as
    /// what is known (the longer view is the fuller one), searched again.
    fn replace(&mut self, whole: &[u8]) {
        let text = clean_console(whole);
        if text.len() >= self.text.len() {
            self.pending.clear();
            self.text = text;
            self.searched = 0;
            self.trim();
        }
    }

    /// Clean whatever is pending (at the end of the stream).
    pub(crate) fn flush(&mut self) {
        let rest = std::mem::take(&mut self.pending);
        self.append(&rest);
    }

    fn append(&mut self, raw: &[u8]) {
        self.text.push_str(&clean_console(raw));
        self.trim();
    }

    fn trim(&mut self) {
        if self.text.len() > 2 * LOG_CAP {
            let mut cut = self.text.len() - LOG_CAP;
            while !self.text.is_char_boundary(cut) {
                cut += 1;
            }
            self.text.drain(..cut);
            self.searched = self.searched.saturating_sub(cut);
        }
    }

    /// Search the text added since the last call (and a little before it, so a
    /// match split across reads is still found).
    pub(crate) fn find_new(&mut self, re: &regex::Regex) -> Option<String> {
        let mut from = self.searched.saturating_sub(512).min(self.text.len());
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        self.searched = self.text.len();
        re.find(&self.text[from..]).map(|m| m.as_str().to_string())
    }

    /// The text of the last few KiB, where a firmware message that just
    /// arrived is (a whole line split across reads included).
    fn recent(&self) -> &str {
        let mut cut = self.text.len().saturating_sub(4096);
        while !self.text.is_char_boundary(cut) {
            cut += 1;
        }
        &self.text[cut..]
    }

    /// The last `cap` bytes of text (cut at a character boundary).
    pub(crate) fn tail(&self, cap: usize) -> String {
        let mut cut = self.text.len().saturating_sub(cap);
        while !self.text.is_char_boundary(cut) {
            cut += 1;
        }
        self.text[cut..].to_string()
    }

    fn take(&mut self, read: ConsoleRead) {
        match read {
            ConsoleRead::Bytes(b) => self.push(&b),
            ConsoleRead::Whole(b) => self.replace(&b),
            ConsoleRead::Nothing | ConsoleRead::Ended => {}
        }
    }
}

/// Stops the guest however [`prove_boot`] is left (errors and panics included).
struct Running<'a>(&'a mut dyn Guest, bool);

impl Running<'_> {
    fn stop(&mut self) {
        if !self.1 {
            self.1 = true;
            self.0.stop();
        }
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How the watch ended, before the report is written.
enum End {
    Booted(String, f64),
    TimedOut,
    NothingBootable(String),
    Stopped(String),
    Failed(String),
    NotRunning(Outcome, String),
}

/// Start `guest`, watch its console for `expect`'s regex until the deadline,
/// stop it and report. `Err` means the attempt could not be made or the
/// watch broke (a tool or API failed); a guest that did not come up is `Ok`
/// with an outcome other than [`Outcome::Booted`].
pub fn prove_boot(guest: &mut dyn Guest, expect: &Expectation) -> Result<BootReport> {
    let t0 = Instant::now();
    let mut console = Console::default();
    let mut g = Running(guest, false);
    let end = match g.0.start() {
        Err(e) => {
            g.stop();
            return Err(e);
        }
        Ok(Start::NotRunning { outcome, detail }) => End::NotRunning(outcome, detail),
        Ok(Start::Running) => watch(g.0, expect, &mut console, t0)?,
    };
    if let End::Booted(..) = end {
        // Let the matched line finish, for the log only.
        let grace = Instant::now() + g.0.grace();
        while !console.text.ends_with('\n') {
            let left = grace.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match g.0.console(left)? {
                ConsoleRead::Ended => break,
                read => console.take(read),
            }
        }
    }
    g.stop();
    let log = g.0.log();
    let setup = g.0.setup();
    drop(g);
    let elapsed = t0.elapsed().as_secs_f64();
    console.flush();
    let (outcome, matched, time_to_marker, detail) = match end {
        End::Booted(m, t) => (
            Outcome::Booted,
            Some(m.clone()),
            Some(t),
            format!("{} printed {m:?} after {t:.1} s", setup.subject),
        ),
        End::TimedOut => (
            Outcome::TimedOut,
            None,
            None,
            format!(
                "no match for {:?} on {} within {} s",
                expect.wait_for(),
                setup.console,
                expect.timeout.as_secs()
            ),
        ),
        End::NothingBootable(line) => (
            Outcome::NothingBootable,
            None,
            None,
            nothing_bootable_detail(&line, elapsed),
        ),
        End::Stopped(how) => (
            Outcome::GuestStopped,
            None,
            None,
            format!(
                "{how} after {elapsed:.1} s without printing {:?}",
                expect.wait_for()
            ),
        ),
        End::Failed(detail) => (Outcome::QemuFailed, None, None, detail),
        End::NotRunning(outcome, detail) => (outcome, None, None, detail),
    };
    Ok(BootReport {
        wait_for: expect.wait_for().to_string(),
        outcome,
        matched,
        time_to_marker_secs: time_to_marker,
        elapsed_secs: elapsed,
        detail,
        console_log: console.tail(LOG_CAP),
        qemu_stderr: log,
        setup,
    })
}

/// The watch of a running guest, up to the first thing that ends it.
fn watch(
    guest: &mut dyn Guest,
    expect: &Expectation,
    console: &mut Console,
    t0: Instant,
) -> Result<End> {
    let re = &expect.wait_for;
    let watch0 = Instant::now();
    loop {
        if expect.stopped() {
            return Err(BootError::Stopped);
        }
        let left = expect.timeout.saturating_sub(watch0.elapsed());
        if left.is_zero() {
            return Ok(End::TimedOut);
        }
        let read = guest.console(match expect.stop {
            Some(_) => left.min(STOP_POLL),
            None => left,
        })?;
        let ended = read == ConsoleRead::Ended;
        console.take(read);
        if ended {
            console.flush();
        }
        if let Some(m) = console.find_new(re) {
            return Ok(End::Booted(m, t0.elapsed().as_secs_f64()));
        }
        if let Some(line) = nothing_bootable(console.recent()) {
            return Ok(End::NothingBootable(line));
        }
        let end = match guest.state()? {
            // A stream that ended while the machine runs: nothing more will come.
            GuestState::Running if ended => End::Stopped("the guest's console closed".into()),
            GuestState::Running => continue,
            GuestState::Failed { detail } => End::Failed(detail),
            GuestState::Stopped { how } => End::Stopped(how),
        };
        // Whatever the guest printed before it stopped counts.
        if !ended {
            let last = guest.console(Duration::ZERO)?;
            console.take(last);
        }
        console.flush();
        if let Some(m) = console.find_new(re) {
            return Ok(End::Booted(m, t0.elapsed().as_secs_f64()));
        }
        return Ok(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// A guest whose console and state follow a script, one step per read.
    #[derive(Default)]
    struct Scripted {
        start: Option<Start>,
        reads: VecDeque<(ConsoleRead, GuestState)>,
        state: Option<GuestState>,
        grace: Duration,
        started: bool,
        stops: u32,
        waits: Vec<Duration>,
    }

    impl Scripted {
        fn new(steps: Vec<(ConsoleRead, GuestState)>) -> Self {
            Scripted {
                reads: steps.into(),
                ..Default::default()
            }
        }
    }

    fn bytes(s: &str) -> ConsoleRead {
        ConsoleRead::Bytes(s.as_bytes().to_vec())
    }

    fn stopped() -> GuestState {
        GuestState::Stopped {
            how: "the guest powered off or rebooted".into(),
        }
    }

    impl Guest for Scripted {
        fn start(&mut self) -> Result<Start> {
            self.started = true;
            Ok(self.start.clone().unwrap_or(Start::Running))
        }
        fn console(&mut self, wait: Duration) -> Result<ConsoleRead> {
            assert!(self.started, "console read before start");
            self.waits.push(wait);
            match self.reads.pop_front() {
                Some((read, state)) => {
                    self.state = Some(state);
                    Ok(read)
                }
                None => {
                    // The script is over: the guest prints nothing more.
                    std::thread::sleep(wait.min(Duration::from_millis(2)));
                    Ok(ConsoleRead::Nothing)
                }
            }
        }
        fn state(&mut self) -> Result<GuestState> {
            Ok(self.state.clone().unwrap_or(GuestState::Running))
        }
        fn stop(&mut self) {
            self.stops += 1;
        }
        fn log(&mut self) -> String {
            "hypervisor log".into()
        }
        fn grace(&self) -> Duration {
            self.grace
        }
        fn setup(&self) -> Setup {
            Setup {
                driver: "scripted".into(),
                target: "file:vol.raw".into(),
                firmware: Firmware::Bios,
                firmware_reason: "requested".into(),
                bus: Bus::Virtio,
                bus_reason: "requested".into(),
                command: vec!["fake".into()],
                subject: "guest".into(),
                console: "the serial console".into(),
            }
        }
    }

    fn expect(timeout_ms: u64) -> Expectation {
        Expectation::new("MGEAR-BOOT-OK [a-z0-9]+", Duration::from_millis(timeout_ms)).unwrap()
    }

    /// A stop asked for (Ctrl-C) ends the watch within a poll and stops the guest: the watch
    /// read the console until the timeout and called the boot failed.
    #[test]
    fn a_stop_ends_the_watch_and_stops_the_guest() {
        static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        fn stop() -> bool {
            STOP.load(std::sync::atomic::Ordering::SeqCst)
        }
        let mut g = Scripted::new(vec![(bytes("SeaBIOS\r\n"), GuestState::Running)]);
        let asked = std::thread::spawn(|| {
            std::thread::sleep(Duration::from_millis(200));
            STOP.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let started = Instant::now();
        let e = prove_boot(&mut g, &expect(600_000).with_stop(Some(stop))).unwrap_err();
        asked.join().unwrap();
        assert!(matches!(e, BootError::Stopped), "{e}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(g.stops, 1, "the guest is stopped");
        assert!(
            g.waits.iter().all(|w| *w <= STOP_POLL),
            "each read waits at most a poll: {:?}",
            &g.waits[..3.min(g.waits.len())]
        );
    }

    #[test]
    fn marker_split_across_reads_and_escapes_proves_the_boot() {
        let mut g = Scripted::new(vec![
            (
                bytes("SeaBIOS\r\n\x1b[2JLinux\r\nMGEAR-BOOT"),
                GuestState::Running,
            ),
            (bytes("-OK web01"), GuestState::Running),
            (bytes("\r\nmore\r\n"), GuestState::Running),
        ]);
        // The rest of the matched line is read within the grace period.
        g.grace = Duration::from_secs(60);
        let r = prove_boot(&mut g, &expect(60_000)).unwrap();
        assert_eq!(r.outcome, Outcome::Booted, "{}", r.detail);
        assert_eq!(r.matched.as_deref(), Some("MGEAR-BOOT-OK web01"));
        assert!(r.time_to_marker_secs.is_some());
        assert!(r
            .detail
            .starts_with("guest printed \"MGEAR-BOOT-OK web01\""));
        assert_eq!(r.console_log, "SeaBIOS\nLinux\nMGEAR-BOOT-OK web01\nmore\n");
        assert_eq!(
            (r.setup.driver.as_str(), r.qemu_stderr.as_str()),
            ("scripted", "hypervisor log")
        );
        assert_eq!(g.stops, 1);
        assert!(r.require_booted().is_ok());
    }

    /// The report's JSON keeps the driver's setup at its top level, as
    /// `mgear boot --json`, the e2e tests and users' scripts read it, and
    /// leaves out what only phrases the detail.
    #[test]
    fn the_json_report_carries_the_setup_at_its_top_level() {
        let mut g = Scripted::new(vec![(bytes("MGEAR-BOOT-OK web01\n"), GuestState::Running)]);
        let r = prove_boot(&mut g, &expect(60_000)).unwrap();
        let v = serde_json::to_value(&r).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        let mut want = vec![
            "driver",
            "target",
            "firmware",
            "firmware_reason",
            "bus",
            "bus_reason",
            "wait_for",
            "outcome",
            "matched",
            "time_to_marker_seconds",
            "elapsed_seconds",
            "detail",
            "console_log",
            "qemu_stderr",
            "command",
        ];
        want.sort_unstable();
        assert_eq!(keys, want, "{v}");
        assert_eq!(v["driver"], "scripted");
        assert_eq!(v["target"], "file:vol.raw");
        assert_eq!(v["firmware"], "bios");
        assert_eq!(v["bus"], "virtio");
        assert_eq!(v["bus_reason"], "requested");
        assert_eq!(v["command"], serde_json::json!(["fake"]));
        assert_eq!(v["outcome"], "booted");
    }

    #[test]
    fn silence_until_the_deadline_times_out() {
        let mut g = Scripted::new(vec![(bytes("GRUB loading\n"), GuestState::Running)]);
        let r = prove_boot(&mut g, &expect(30)).unwrap();
        assert_eq!(r.outcome, Outcome::TimedOut);
        assert!(
            r.detail
                .contains("no match for \"MGEAR-BOOT-OK [a-z0-9]+\" on the serial console"),
            "{}",
            r.detail
        );
        assert_eq!(r.console_log, "GRUB loading\n");
        assert_eq!(g.stops, 1);
        // No read waits past the deadline.
        assert!(g.waits.iter().all(|w| *w <= Duration::from_millis(30)));
        assert!(r.require_booted().is_err());
    }

    #[test]
    fn a_guest_that_stops_without_the_marker_is_reported_stopped() {
        let mut g = Scripted::new(vec![
            (bytes("Kernel panic - not syncing\n"), GuestState::Running),
            (ConsoleRead::Nothing, stopped()),
        ]);
        let r = prove_boot(&mut g, &expect(60_000)).unwrap();
        assert_eq!(r.outcome, Outcome::GuestStopped);
        assert!(
            r.detail
                .starts_with("the guest powered off or rebooted after"),
            "{}",
            r.detail
        );
        assert!(r.console_log.contains("Kernel panic"));
        assert_eq!(g.stops, 1);
    }

    #[test]
    fn what_a_guest_printed_just_before_it_stopped_still_counts() {
        // A polled console: the marker is in the log, seen only by the last read.
        let mut g = Scripted::new(vec![
            (bytes("Linux\n"), stopped()),
            (bytes("MGEAR-BOOT-OK web01\n"), stopped()),
        ]);
        let r = prove_boot(&mut g, &expect(60_000)).unwrap();
        assert_eq!(r.outcome, Outcome::Booted, "{}", r.detail);
        // A stream that ends without the marker: the guest stopped.
        let mut g = Scripted::new(vec![
            (bytes("reboot: Power down\n"), GuestState::Running),
            (ConsoleRead::Ended, stopped()),
        ]);
        let r = prove_boot(&mut g, &expect(60_000)).unwrap();
        assert_eq!(r.outcome, Outcome::GuestStopped);
        assert_eq!(r.console_log, "reboot: Power down\n");
    }

    #[test]
    fn nothing_bootable_ends_at_once() {
        let mut g = Scripted::new(vec![
            (
                bytes("Booting from Hard Disk...\nBoot failed: not a bootable disk\n\nNo bootable"),
                GuestState::Running,
            ),
            (bytes(" device.\n"), GuestState::Running),
        ]);
        // The deadline is an hour away: the firmware's message ends the attempt.
        let r = prove_boot(&mut g, &expect(3_600_000)).unwrap();
        assert_eq!(r.outcome, Outcome::NothingBootable);
        assert!(r.detail.contains("\"No bootable device.\""), "{}", r.detail);
        assert!(r.detail.contains("found nothing to boot"), "{}", r.detail);
        assert_eq!(g.reads.len(), 0);
        assert_eq!(g.stops, 1);
    }

    #[test]
    fn a_crashed_machine_or_one_that_never_ran_is_a_hypervisor_failure() {
        let mut g = Scripted::new(vec![
            (bytes("SeaBIOS\n"), GuestState::Running),
            (
                ConsoleRead::Ended,
                GuestState::Failed {
                    detail: "QEMU exited with exit status: 1: could not open disk".into(),
                },
            ),
        ]);
        let r = prove_boot(&mut g, &expect(60_000)).unwrap();
        assert_eq!(r.outcome, Outcome::QemuFailed);
        assert_eq!(
            r.detail,
            "QEMU exited with exit status: 1: could not open disk"
        );
        assert_eq!(r.console_log, "SeaBIOS\n");

        let mut g = Scripted::new(vec![]);
        g.start = Some(Start::NotRunning {
            outcome: Outcome::QemuFailed,
            detail: "libvirt could not run the domain: no such firmware".into(),
        });
        let r = prove_boot(&mut g, &expect(60_000)).unwrap();
        assert_eq!(r.outcome, Outcome::QemuFailed);
        assert!(r.detail.contains("no such firmware"));
        assert!(
            g.waits.is_empty(),
            "a machine that never ran is not watched"
        );
        assert_eq!(g.stops, 1);
    }

    #[test]
    fn a_polled_whole_console_replaces_the_text_only_when_longer() {
        let mut g = Scripted::new(vec![
            (
                ConsoleRead::Whole(b"SeaBIOS\r\nbooting\r\n".to_vec()),
                GuestState::Running,
            ),
            // A view cut to its last lines is not kept over the fuller one.
            (
                ConsoleRead::Whole(b"booting\r\n".to_vec()),
                GuestState::Running,
            ),
            (
                ConsoleRead::Whole(b"SeaBIOS\r\nbooting\r\nMGEAR-BOOT-OK s1\r\n".to_vec()),
                GuestState::Running,
            ),
        ]);
        let r = prove_boot(&mut g, &expect(60_000)).unwrap();
        assert_eq!(r.matched.as_deref(), Some("MGEAR-BOOT-OK s1"));
        assert_eq!(r.console_log, "SeaBIOS\nbooting\nMGEAR-BOOT-OK s1\n");
    }

    #[test]
    fn bad_regexes_are_refused_before_anything_starts() {
        assert!(matches!(
            Expectation::new("(", Duration::from_secs(1)),
            Err(BootError::Usage(_))
        ));
        // A pattern an empty console matches proves nothing (an all-zero disk "booted").
        for empty in ["", ".*", "x?", "^"] {
            let e = Expectation::new(empty, Duration::from_secs(1)).unwrap_err();
            assert!(e.to_string().contains("proves nothing"), "{empty:?}: {e}");
        }
        assert!(Expectation::new("login: ", Duration::from_secs(1)).is_ok());
        // What the firmware prints on any disk proves nothing either.
        for firmware in [
            "SeaBIOS",
            "login:|Boot",
            "(?i)debian",
            "BdsDxe",
            "Shell>",
            "\n",
            "\n\nBooting",
            "Hard Disk\\.\\.\\.\nBoot",
            "Not Found\nBdsDxe",
        ] {
            let e = Expectation::new(firmware, Duration::from_secs(1)).unwrap_err();
            assert!(
                e.to_string().contains("firmware itself prints"),
                "{firmware:?}: {e}"
            );
        }
        for guest in ["MGEAR-BOOT-OK [a-z0-9]+", "login: $", "Debian GNU/Linux 12"] {
            assert!(
                Expectation::new(guest, Duration::from_secs(1)).is_ok(),
                "{guest}"
            );
        }
    }

    #[test]
    fn console_handles_split_escapes_and_characters() {
        let re = regex::Regex::new("login: $").unwrap();
        let mut c = Console::default();
        c.push(b"Debian \x1b[");
        assert_eq!(c.find_new(&re), None);
        c.push(b"1mGNU\x1b[0m \xC3");
        c.push(b"\xA9 login: ");
        assert_eq!(c.find_new(&re).as_deref(), Some("login: "));
        assert_eq!(c.tail(1000), "Debian GNU \u{e9} login: ");
        // Bytes held back at the end of the stream are cleaned by flush.
        let mut c = Console::default();
        c.push(b"OK \xC3");
        assert_eq!(c.tail(100), "OK ");
        c.flush();
        assert!(c.pending.is_empty());
        assert_eq!(c.tail(100), "OK \u{fffd}");
    }
}
