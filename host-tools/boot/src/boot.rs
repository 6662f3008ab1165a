//! Boot a volume and prove it came up.
//!
//! A boot counts only when a regex (a login prompt, the sample disk's
//! `MGEAR-BOOT-OK` marker) appears on the guest's serial console before the
//! deadline. This module holds what every driver shares (the target, the
//! options, the [`BootReport`]) and the local driver, [`LocalQemu`] (QEMU with
//! `-accel tcg -nic none`, ALWAYS: never KVM, never a guest network). Drivers
//! implement only [`crate::Guest`] (start, console, state, stop); the proof
//! itself (console watch, deadline, outcome, report) is
//! [`crate::proof::prove_boot`], one routine for local QEMU, libvirt
//! (`crate::libvirt`) and OpenStack Nova (`mgear_cloud::boot`).
//!
//! QEMU is killed on every exit path ([`QemuGuard`]'s `Drop`), including
//! errors and panics in the watcher.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::mpsc;
use std::time::Duration;

use serde::Serialize;

use crate::partition::{read_table, Table, TableKind};
use crate::proof::{prove_boot, ConsoleRead, Expectation, Guest, GuestState, Setup, Start};
use crate::sample::{find_tool, network_deadline, run_tool_within};
use crate::{inspect, BootError, ReadAt, Result};

/// Where the volume to boot lives. Command-line specs are parsed into this
/// by the host tools' one spec parser (`mgear::spec`), not here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "location", rename_all = "lowercase")]
pub enum Target {
    /// Raw image file (`file:PATH`).
    File(PathBuf),
    /// qcow2 image file (`qcow2:PATH`).
    Qcow2(PathBuf),
    /// Raw block device, e.g. a cloud volume attached to this host (`dev:/dev/sdX`).
    Dev(PathBuf),
    /// NBD export URL (`nbd://host:port/export`, `nbd+unix:///export?socket=PATH`).
    Nbd(String),
    /// Ceph RBD image in qemu's rbd syntax (`rbd:POOL/IMAGE[:conf=PATH][:id=USER]`): a network
    /// disk of protocol rbd, the way OpenStack's compute attaches Cinder volumes.
    Rbd(String),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::File(p) => write!(f, "file:{}", p.display()),
            Target::Qcow2(p) => write!(f, "qcow2:{}", p.display()),
            Target::Dev(p) => write!(f, "dev:{}", p.display()),
            Target::Nbd(u) | Target::Rbd(u) => write!(f, "{u}"),
        }
    }
}

impl Target {
    /// Image format and location as QEMU's `-drive` wants them.
    fn qemu_drive(&self) -> (&'static str, String) {
        match self {
            // Absolute: qemu reads a relative `file:v.qcow2` as its file protocol and
            // `-o.qcow2` as an option.
            Target::File(p) | Target::Dev(p) => ("raw", absolute(p).display().to_string()),
            Target::Qcow2(p) => ("qcow2", absolute(p).display().to_string()),
            Target::Nbd(u) | Target::Rbd(u) => ("raw", u.clone()),
        }
    }

    /// Where the boot report goes by default: next to a file volume, in the
    /// current directory for devices and exports.
    pub fn default_report_path(&self) -> PathBuf {
        match self {
            Target::File(p) | Target::Qcow2(p) => {
                let mut s = p.as_os_str().to_owned();
                s.push(".boot-report.json");
                PathBuf::from(s)
            }
            Target::Dev(_) | Target::Nbd(_) | Target::Rbd(_) => {
                PathBuf::from("mgear-boot-report.json")
            }
        }
    }

    /// Check the target exists before starting QEMU, so a typo is an I/O error
    /// with the path rather than a QEMU message.
    fn check_exists(&self) -> Result<()> {
        match self {
            Target::File(p) | Target::Qcow2(p) | Target::Dev(p) => std::fs::metadata(p)
                .map(|_| ())
                .map_err(|e| BootError::io(format!("volume {}", p.display()), e)),
            Target::Nbd(_) | Target::Rbd(_) => Ok(()),
        }
    }
}

/// Disk bus the volume is attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Bus {
    /// virtio-blk if the guest has the drivers (or they cannot be checked), else IDE.
    Auto,
    /// virtio-blk (KVM, OpenStack).
    Virtio,
    /// IDE on the i440FX PIIX controller.
    Ide,
    /// SATA on the Q35 AHCI controller.
    Sata,
    /// NVMe (AWS Nitro).
    Nvme,
}

impl FromStr for Bus {
    type Err = BootError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Bus::Auto),
            "virtio" => Ok(Bus::Virtio),
            "ide" => Ok(Bus::Ide),
            "sata" => Ok(Bus::Sata),
            "nvme" => Ok(Bus::Nvme),
            _ => Err(BootError::Usage(format!(
                "unknown bus {s:?}: use virtio, ide, sata, nvme or auto"
            ))),
        }
    }
}

/// Firmware the guest boots with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    /// UEFI if the disk is GPT with an EFI System Partition, else BIOS.
    Auto,
    /// SeaBIOS (QEMU's default).
    Bios,
    /// OVMF (Debian package `ovmf`).
    Uefi,
}

impl FromStr for Firmware {
    type Err = BootError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Firmware::Auto),
            "bios" => Ok(Firmware::Bios),
            "uefi" => Ok(Firmware::Uefi),
            _ => Err(BootError::Usage(format!(
                "unknown firmware {s:?}: use bios, uefi or auto"
            ))),
        }
    }
}

/// What to boot and how to decide it came up.
#[derive(Debug, Clone)]
pub struct BootSpec {
    /// The volume.
    pub target: Target,
    /// Regex that proves the boot when it appears on the serial console.
    pub wait_for: String,
    /// Deadline for the regex.
    pub timeout: Duration,
    /// Disk bus.
    pub bus: Bus,
    /// Firmware.
    pub firmware: Firmware,
    /// Guest memory.
    pub memory_mib: u32,
    /// Discard guest writes (QEMU `-snapshot`): prove the boot without
    /// changing the volume. On by default: only an explicit `false`
    /// (`mgear boot --write`) lets the guest write to the volume.
    pub snapshot: bool,
    /// The machine's other disks, attached after `target` in this order on
    /// the same bus (a machine set; local QEMU only).
    pub data_disks: Vec<Target>,
    /// Asked while the console is watched: `true` stops the guest and ends the boot with
    /// [`BootError::Stopped`] (Ctrl-C; the watch went on to the timeout and the boot was
    /// called failed).
    pub stop: Option<fn() -> bool>,
}

impl BootSpec {
    /// A spec with the defaults of `mgear boot` (auto bus and firmware, 512 MiB, 300 s).
    pub fn new(target: Target, wait_for: impl Into<String>) -> Self {
        BootSpec {
            target,
            wait_for: wait_for.into(),
            timeout: Duration::from_secs(300),
            bus: Bus::Auto,
            firmware: Firmware::Auto,
            memory_mib: 512,
            snapshot: true,
            data_disks: Vec::new(),
            stop: None,
        }
    }
}

/// How a boot attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// The regex appeared on the console.
    Booted,
    /// The deadline passed without the regex.
    TimedOut,
    /// The guest powered off or rebooted without printing the regex.
    GuestStopped,
    /// QEMU itself failed (bad image, missing firmware file...).
    QemuFailed,
    /// The firmware found nothing to boot ("No bootable device"): ended
    /// at once instead of waiting for the deadline.
    NothingBootable,
}

/// What BIOS and UEFI firmware print when no disk holds anything bootable:
/// SeaBIOS after trying every device, OVMF's boot manager when every boot
/// option failed. Neither recovers on its own, so waiting longer is useless.
/// OVMF with no boot option left drops to its interactive shell ("UEFI Interactive Shell"
/// then "Shell>"), and a FAT volume's boot sector without a loader prints "This is not a
/// bootable disk": neither goes on by itself either. Nor does GRUB at its command line
/// (`grub>`: no grub.cfg it can read) or its rescue shell (`grub rescue>`: its modules not
/// found): a cutover waited out its whole boot timeout there, all of it downtime.
const NOTHING_BOOTABLE: &str = r"No bootable device|No bootable option or device was found|UEFI Interactive Shell|This is not a bootable disk|(?m)^grub( rescue)?> ";

/// The firmware's "nothing to boot" line in `console`, if it printed one.
pub fn nothing_bootable(console: &str) -> Option<String> {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let re = RE.get_or_init(|| regex::Regex::new(NOTHING_BOOTABLE).expect("constant regex"));
    let at = re.find(console)?;
    let start = console[..at.start()].rfind('\n').map_or(0, |i| i + 1);
    let end = console[at.end()..]
        .find('\n')
        .map_or(console.len(), |i| at.end() + i);
    Some(console[start..end].trim().to_string())
}

/// The report's explanation of [`Outcome::NothingBootable`].
pub fn nothing_bootable_detail(line: &str, elapsed: f64) -> String {
    if line.starts_with("grub") {
        return format!(
            "the boot loader stopped at its shell after {elapsed:.1} s ({line:?}): GRUB found no \
             configuration it can read (grub.cfg) or, at `grub rescue>`, not its own modules: \
             the disk's boot files are missing or damaged (written while the disk was \
             captured or synced?)"
        );
    }
    format!(
        "the firmware found nothing to boot after {elapsed:.1} s ({line:?}): the volume has no \
         boot loader the firmware can start (empty, not a system disk, or BIOS/UEFI mismatch: \
         see --firmware)"
    )
}

/// Record of one boot attempt, written as JSON next to the volume.
#[derive(Debug, Clone, Serialize)]
pub struct BootReport {
    /// Where and how the machine ran, as its driver set it up; serialized at
    /// the report's top level (`driver`, `target`, `firmware`, `bus`,
    /// `command`, ...).
    #[serde(flatten)]
    pub setup: Setup,
    /// Regex waited for.
    pub wait_for: String,
    /// Result.
    pub outcome: Outcome,
    /// Text that matched the regex.
    pub matched: Option<String>,
    /// Seconds from QEMU start to the match (`*_seconds` in JSON, as every duration is).
    #[serde(rename = "time_to_marker_seconds")]
    pub time_to_marker_secs: Option<f64>,
    /// Seconds the attempt took.
    #[serde(rename = "elapsed_seconds")]
    pub elapsed_secs: f64,
    /// Human explanation of the outcome.
    pub detail: String,
    /// The serial console (escape sequences and CRs removed; the last 256 KiB).
    pub console_log: String,
    /// QEMU's stderr.
    pub qemu_stderr: String,
}

impl BootReport {
    /// True when the guest proved it booted.
    pub fn booted(&self) -> bool {
        self.outcome == Outcome::Booted
    }

    /// The last `lines` lines of the console, for error messages.
    pub fn console_tail(&self, lines: usize) -> String {
        let all: Vec<&str> = self.console_log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// `Ok` if booted, else [`BootError::NotBooted`] with the reason and the
    /// last 30 console lines (for callers such as `ingest --boot`).
    pub fn require_booted(&self) -> Result<()> {
        if self.booted() {
            Ok(())
        } else {
            // A guest never started printed nothing: no empty tail under the reason.
            Err(BootError::NotBooted(match self.console_tail(30) {
                tail if tail.trim().is_empty() => self.detail.clone(),
                tail => format!("{}\n--- console tail ---\n{tail}", self.detail),
            }))
        }
    }

    /// Write the report as pretty JSON.
    pub fn write_json(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| BootError::Format(format!("serialising boot report: {e}")))?;
        // Into its `.partial`, then renamed: a reader never sees half a report.
        let mut partial = path.as_os_str().to_owned();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        std::fs::write(&partial, text + "\n")
            .and_then(|()| std::fs::rename(&partial, path))
            .map_err(|e| {
                let _ = std::fs::remove_file(&partial);
                BootError::io(format!("writing boot report {}", path.display()), e)
            })
    }
}

/// Boot with the embedded default driver, [`LocalQemu`].
pub fn boot(spec: &BootSpec) -> Result<BootReport> {
    LocalQemu::new()?.boot(spec)
}

/// Local `qemu-system-x86_64` under TCG, no guest network.
#[derive(Debug, Clone)]
pub struct LocalQemu {
    qemu: PathBuf,
}

/// Kills and reaps QEMU when dropped, whatever path leaves the watcher.
struct QemuGuard(Child);

impl Drop for QemuGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// OVMF code and variable-template files, newest layout first.
const OVMF_PAIRS: [(&str, &str); 2] = [
    (
        "/usr/share/OVMF/OVMF_CODE_4M.fd",
        "/usr/share/OVMF/OVMF_VARS_4M.fd",
    ),
    (
        "/usr/share/OVMF/OVMF_CODE.fd",
        "/usr/share/OVMF/OVMF_VARS.fd",
    ),
];

/// Remove ANSI escape sequences and carriage returns (GRUB and OVMF paint the
/// screen with them) so the regex and the report see plain text.
pub fn clean_console(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => match chars.peek() {
                Some('[') => {
                    chars.next();
                    for c in chars.by_ref() {
                        if c.is_ascii_alphabetic() || c == '~' {
                            break;
                        }
                    }
                }
                Some('(') | Some(')') => {
                    chars.next();
                    chars.next();
                }
                _ => {
                    chars.next();
                }
            },
            '\r' => {}
            c if c.is_control() && c != '\n' && c != '\t' => {}
            c => out.push(c),
        }
    }
    out
}

/// Read the first MiB and the size of a target, to look at its partition table.
fn read_head(target: &Target) -> Result<(Vec<u8>, u64)> {
    const HEAD: u64 = 1024 * 1024;
    match target {
        Target::File(p) | Target::Dev(p) => {
            let mut f = std::fs::File::open(p)
                .map_err(|e| BootError::io(format!("opening {}", p.display()), e))?;
            let size = std::io::Seek::seek(&mut f, std::io::SeekFrom::End(0))
                .map_err(|e| BootError::io(format!("sizing {}", p.display()), e))?;
            let mut head = vec![0u8; size.min(HEAD) as usize];
            f.read_exact_at(0, &mut head)?;
            Ok((head, size))
        }
        Target::Qcow2(_) | Target::Nbd(_) | Target::Rbd(_) => {
            let qemu_img = find_tool("qemu-img", "qemu-utils")?;
            let (fmt, loc) = target.qemu_drive();
            let info = run_tool_within(
                Command::new(&qemu_img).args(["info", "-U", "--output=json", "-f", fmt, &loc]),
                "qemu-img info",
                network_deadline(),
            )?;
            let v: serde_json::Value = serde_json::from_slice(&info)
                .map_err(|e| BootError::Format(format!("qemu-img info output: {e}")))?;
            let size = v["virtual-size"].as_u64().ok_or_else(|| {
                BootError::Format("qemu-img info did not report a virtual-size".into())
            })?;
            let tmp = tempfile::tempdir()
                .map_err(|e| BootError::io("creating a temporary directory", e))?;
            let out = tmp.path().join("head.raw");
            run_tool_within(
                Command::new(&qemu_img)
                    .args(["dd", "-U", "-f", fmt, "-O", "raw", "bs=65536"])
                    .arg(format!("count={}", size.min(HEAD).div_ceil(65536)))
                    .arg(format!("if={loc}"))
                    .arg(format!("of={}", out.display())),
                "qemu-img dd",
                network_deadline(),
            )?;
            let mut head = std::fs::read(&out)
                .map_err(|e| BootError::io("reading the volume's first MiB", e))?;
            head.truncate(size.min(HEAD) as usize);
            Ok((head, size))
        }
    }
}

/// Reads within the first MiB; beyond it, an error (the GPT backup header is
/// only consulted when the primary is damaged).
struct Head(Vec<u8>);

impl ReadAt for Head {
    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let start = usize::try_from(offset).ok();
        let src = start
            .and_then(|s| s.checked_add(buf.len()).map(|e| (s, e)))
            .and_then(|(s, e)| self.0.get(s..e))
            .ok_or_else(|| {
                BootError::Format(format!(
                    "partition data at offset {offset} lies beyond the first MiB"
                ))
            })?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// The firmware to start, why, and the disk's first bytes when they were read to decide
/// ([`never_boots`] looks at them too: read once).
fn resolve_firmware(spec: &BootSpec) -> Result<(Firmware, String, Option<Vec<u8>>)> {
    match spec.firmware {
        Firmware::Bios => Ok((Firmware::Bios, "requested".into(), None)),
        Firmware::Uefi => Ok((Firmware::Uefi, "requested".into(), None)),
        Firmware::Auto => {
            let (head, size) = read_head(&spec.target)?;
            let mut head = Head(head);
            let (fw, why) = firmware_from_table(read_table(&mut head, size));
            Ok((fw, why, Some(head.0)))
        }
    }
}

/// What `auto` picks from a partition table read (or the failure to read one).
fn firmware_from_table(table: Result<Table>) -> (Firmware, String) {
    match table {
        Ok(t) if t.kind == TableKind::Gpt && t.partitions.iter().any(|p| p.ptype.is_esp()) => {
            (Firmware::Uefi, "GPT with an EFI System Partition".into())
        }
        Ok(t) if t.kind == TableKind::Gpt => (
            Firmware::Bios,
            "GPT without an EFI System Partition: BIOS boot".into(),
        ),
        Ok(t) if t.kind == TableKind::Mbr => (Firmware::Bios, "MBR partition table".into()),
        Ok(_) => (
            Firmware::Bios,
            "no partition table; BIOS is QEMU's default".into(),
        ),
        Err(e) => {
            let why = match e {
                BootError::Partition(m) => m,
                other => other.to_string(),
            };
            (
                Firmware::Bios,
                format!("partition table unreadable ({why}); BIOS is QEMU's default"),
            )
        }
    }
}

/// Whether BIOS firmware finds an MBR on `head` (a disk's first bytes) with no boot code in
/// front of its signature: SeaBIOS jumps into the zeros and hangs without a word (a GPT
/// disk's protective MBR on a disk with no BIOS boot loader, a data disk with a partition
/// table), so a boot waited out its whole deadline. Without the signature SeaBIOS says "not a
/// bootable disk" itself.
pub(crate) fn bios_finds_no_code(head: &[u8]) -> bool {
    head.len() >= 512 && head[510..512] == [0x55, 0xaa] && head[..440].iter().all(|&b| b == 0)
}

/// Why the guest of `spec` is not started at all under `firmware` (`None`: start it);
/// `head`: the disk's first bytes if [`resolve_firmware`] read them.
fn never_boots(
    spec: &BootSpec,
    firmware: Firmware,
    why: &str,
    head: Option<Vec<u8>>,
) -> Option<String> {
    if firmware != Firmware::Bios {
        return None;
    }
    let head = match head {
        Some(h) => h,
        None => read_head(&spec.target).ok()?.0,
    };
    bios_finds_no_code(&head).then(|| {
        format!(
            "the disk's MBR has no boot code (its first 440 bytes are zeros) and the firmware is \
             BIOS ({why}): BIOS would jump into it and hang without a word until the deadline, \
             so the guest was not started. A data disk, or a system disk whose boot loader was \
             not captured: boot the system disk (the first --target), or with --firmware uefi \
             if it has an EFI System Partition"
        )
    })
}

fn resolve_bus(spec: &BootSpec) -> (Bus, String) {
    let facts = match (&spec.target, spec.bus) {
        (Target::File(p) | Target::Dev(p), Bus::Auto) => inspect::inspect_path(p).ok(),
        _ => None,
    };
    bus_for(spec.bus, facts.as_ref())
}

/// The bus to attach: the requested one, or for `auto` virtio unless the
/// guest's initramfs is known to lack a virtio disk driver (then IDE).
pub(crate) fn bus_for(requested: Bus, facts: Option<&inspect::DiskFacts>) -> (Bus, String) {
    if requested != Bus::Auto {
        return (requested, "requested".into());
    }
    match facts.and_then(|f| f.linux.as_ref()) {
        Some(l)
            if matches!(
                l.virtio,
                inspect::DriverPresence::Missing | inspect::DriverPresence::RootFs
            ) =>
        {
            (
                Bus::Ide,
                "the guest's initramfs has no virtio disk driver; IDE is the safe fallback".into(),
            )
        }
        Some(_) => (
            Bus::Virtio,
            "the guest has virtio drivers or they could not be ruled out".into(),
        ),
        None => (Bus::Virtio, "virtio is what KVM clouds attach".into()),
    }
}

/// QEMU option values escape a comma by doubling it.
/// `p` as QEMU and the tools built on it must be given a file: absolute (see `qemu_drive`).
pub(crate) fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| Path::new(".").join(p))
}

fn qemu_escape(s: &str) -> String {
    s.replace(',', ",,")
}

impl LocalQemu {
    /// Find `qemu-system-x86_64`.
    pub fn new() -> Result<Self> {
        Ok(LocalQemu {
            qemu: find_tool("qemu-system-x86_64", "qemu-system-x86")?,
        })
    }

    fn command(
        &self,
        spec: &BootSpec,
        firmware: Firmware,
        bus: Bus,
        vars: Option<&Path>,
    ) -> Result<Vec<String>> {
        let (fmt, loc) = spec.target.qemu_drive();
        let file = format!("file={},format={fmt}", qemu_escape(&loc));
        let mut a: Vec<String> = [
            "-accel",
            "tcg",
            "-nic",
            "none",
            "-nographic",
            "-monitor",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
            "-smp",
            "1",
        ]
        .map(String::from)
        .to_vec();
        a.push("-m".into());
        a.push(spec.memory_mib.to_string());
        a.push("-machine".into());
        a.push(if bus == Bus::Sata { "q35" } else { "pc" }.into());
        match bus {
            Bus::Virtio | Bus::Auto => a.extend(["-drive".into(), format!("{file},if=virtio")]),
            // On pc this is PIIX IDE, on q35 the ICH9 AHCI (SATA) controller.
            Bus::Ide | Bus::Sata => {
                a.extend(["-drive".into(), format!("{file},if=ide,index=0,media=disk")])
            }
            Bus::Nvme => a.extend([
                "-drive".into(),
                format!("{file},if=none,id=disk0"),
                "-device".into(),
                "nvme,drive=disk0,serial=mgear0".into(),
            ]),
        }
        for (i, disk) in spec.data_disks.iter().enumerate() {
            let (fmt, loc) = disk.qemu_drive();
            let file = format!("file={},format={fmt}", qemu_escape(&loc));
            let n = i + 1;
            match bus {
                Bus::Virtio | Bus::Auto => a.extend(["-drive".into(), format!("{file},if=virtio")]),
                Bus::Ide | Bus::Sata => a.extend([
                    "-drive".into(),
                    format!("{file},if=ide,index={n},media=disk"),
                ]),
                Bus::Nvme => a.extend([
                    "-drive".into(),
                    format!("{file},if=none,id=disk{n}"),
                    "-device".into(),
                    format!("nvme,drive=disk{n},serial=mgear{n}"),
                ]),
            }
        }
        if firmware == Firmware::Uefi {
            let (code, _) = OVMF_PAIRS
                .iter()
                .find(|(c, v)| Path::new(c).is_file() && Path::new(v).is_file())
                .ok_or(BootError::MissingTool {
                    tool: "OVMF UEFI firmware (/usr/share/OVMF/OVMF_CODE*.fd)".into(),
                    package: "ovmf".into(),
                })?;
            let vars =
                vars.ok_or_else(|| BootError::Usage("UEFI needs a variable store".into()))?;
            a.extend([
                "-drive".into(),
                format!("if=pflash,format=raw,unit=0,readonly=on,file={code}"),
                "-drive".into(),
                format!(
                    "if=pflash,format=raw,unit=1,file={}",
                    qemu_escape(&vars.display().to_string())
                ),
            ]);
        }
        if spec.snapshot {
            a.push("-snapshot".into());
        }
        Ok(a)
    }
}

impl LocalQemu {
    /// Boot `spec.target` and prove it came up ([`prove_boot`] over a [`QemuGuest`]).
    /// `Err` means the attempt could not be made (usage, missing tool, I/O); a
    /// guest that did not come up is `Ok` with an outcome other than [`Outcome::Booted`].
    pub fn boot(&self, spec: &BootSpec) -> Result<BootReport> {
        let expect = Expectation::new(&spec.wait_for, spec.timeout)?.with_stop(spec.stop);
        let mut guest = self.guest(spec)?;
        prove_boot(&mut guest, &expect)
    }

    /// The machine that boots `spec.target`, ready to start: firmware and bus
    /// resolved, the QEMU command line built, UEFI's variable store copied.
    pub fn guest(&self, spec: &BootSpec) -> Result<QemuGuest> {
        spec.target.check_exists()?;
        for d in &spec.data_disks {
            d.check_exists()?;
        }
        let (firmware, firmware_reason, head) = resolve_firmware(spec)?;
        let never = never_boots(spec, firmware, &firmware_reason, head);
        let (bus, bus_reason) = resolve_bus(spec);
        // OVMF writes its variable store: give it a private copy per boot.
        let tmp =
            tempfile::tempdir().map_err(|e| BootError::io("creating a temporary directory", e))?;
        let vars = if firmware == Firmware::Uefi {
            let (_, tmpl) = OVMF_PAIRS
                .iter()
                .find(|(c, v)| Path::new(c).is_file() && Path::new(v).is_file())
                .ok_or(BootError::MissingTool {
                    tool: "OVMF UEFI firmware (/usr/share/OVMF/OVMF_CODE*.fd)".into(),
                    package: "ovmf".into(),
                })?;
            let v = tmp.path().join("OVMF_VARS.fd");
            std::fs::copy(tmpl, &v).map_err(|e| BootError::io(format!("copying {tmpl}"), e))?;
            Some(v)
        } else {
            None
        };
        let args = self.command(spec, firmware, bus, vars.as_deref())?;
        let mut command = vec![self.qemu.display().to_string()];
        command.extend(args.iter().cloned());
        Ok(QemuGuest {
            qemu: self.qemu.clone(),
            args,
            setup: Setup {
                driver: "local-qemu".into(),
                target: spec.target.to_string(),
                firmware,
                firmware_reason,
                bus,
                bus_reason,
                command,
                subject: "guest".into(),
                console: "the serial console".into(),
            },
            _vars_dir: tmp,
            never,
            child: None,
            console: None,
            reader: None,
            err_reader: None,
            ended: false,
            stderr: String::new(),
        })
    }
}

/// One local QEMU process: its serial console is its stdout, a byte stream.
/// QEMU is killed on every exit path ([`QemuGuard`]'s `Drop`).
pub struct QemuGuest {
    qemu: PathBuf,
    args: Vec<String>,
    setup: Setup,
    /// Holds OVMF's variable store while QEMU runs.
    _vars_dir: tempfile::TempDir,
    /// Why QEMU is not started: the firmware would find nothing to boot and say nothing
    /// ([`never_boots`]).
    never: Option<String>,
    child: Option<QemuGuard>,
    console: Option<mpsc::Receiver<Vec<u8>>>,
    reader: Option<std::thread::JoinHandle<()>>,
    err_reader: Option<std::thread::JoinHandle<String>>,
    /// stdout reached its end: QEMU exited or is exiting.
    ended: bool,
    stderr: String,
}

impl QemuGuest {
    /// QEMU's stderr, once QEMU has closed it.
    fn collect_stderr(&mut self) {
        if let Some(h) = self.err_reader.take() {
            self.stderr = h.join().unwrap_or_default();
        }
    }
}

impl Guest for QemuGuest {
    fn start(&mut self) -> Result<Start> {
        if let Some(detail) = self.never.take() {
            // Nothing runs: the report names no command as run.
            self.setup.command.clear();
            return Ok(Start::NotRunning {
                outcome: Outcome::NothingBootable,
                detail,
            });
        }
        let mut cmd = Command::new(&self.qemu);
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // A process group of its own: the terminal's Ctrl-C goes to mgear, which stops
            // the guest and says it stopped; QEMU killed by it too was told as a guest that
            // powered off ("not booted", exit 1). If mgear dies, the death signal below
            // still ends QEMU.
            .process_group(0);
        // If mgear itself is killed (SIGKILL skips QemuGuard's Drop), the
        // kernel sends QEMU SIGKILL too, so no TCG guest is left spinning.
        // SAFETY: the closure runs in the forked child before exec and only
        // makes the async-signal-safe prctl(2) call.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| BootError::io(format!("starting {}", self.qemu.display()), e))?;
        let guard = self.child.insert(QemuGuard(child));
        let (tx, rx) = mpsc::channel::<Vec<u8>>();
        let mut stdout = guard
            .0
            .stdout
            .take()
            .ok_or_else(|| BootError::Format("QEMU stdout was not captured".into()))?;
        let mut stderr_pipe = guard
            .0
            .stderr
            .take()
            .ok_or_else(|| BootError::Format("QEMU stderr was not captured".into()))?;
        self.reader = Some(std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        }));
        self.err_reader = Some(std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = stderr_pipe.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        }));
        self.console = Some(rx);
        Ok(Start::Running)
    }

    fn console(&mut self, wait: Duration) -> Result<ConsoleRead> {
        let Some(rx) = &self.console else {
            return Ok(ConsoleRead::Ended);
        };
        match rx.recv_timeout(wait) {
            Ok(chunk) => Ok(ConsoleRead::Bytes(chunk)),
            Err(mpsc::RecvTimeoutError::Timeout) => Ok(ConsoleRead::Nothing),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                self.ended = true;
                Ok(ConsoleRead::Ended)
            }
        }
    }

    fn state(&mut self) -> Result<GuestState> {
        // Until stdout ends, QEMU may still have console output on its way.
        if !self.ended {
            return Ok(GuestState::Running);
        }
        let Some(guard) = self.child.as_mut() else {
            return Ok(GuestState::Stopped {
                how: "QEMU was not running".into(),
            });
        };
        let status = guard
            .0
            .wait()
            .map_err(|e| BootError::io("waiting for QEMU", e))?;
        self.collect_stderr();
        Ok(if status.success() {
            GuestState::Stopped {
                how: "the guest powered off or rebooted".into(),
            }
        } else {
            GuestState::Failed {
                detail: format!("QEMU exited with {status}: {}", self.stderr.trim()),
            }
        })
    }

    fn stop(&mut self) {
        drop(self.child.take());
        drop(self.console.take());
        if let Some(h) = self.reader.take() {
            let _ = h.join();
        }
        self.collect_stderr();
    }

    fn log(&mut self) -> String {
        self.stderr.clone()
    }

    fn setup(&self) -> Setup {
        self.setup.clone()
    }

    fn grace(&self) -> Duration {
        // The rest of the matched line is usually in QEMU's next write.
        Duration::from_secs(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bios_finds_no_code_behind_a_bare_signature_only() {
        let mut mbr = vec![0u8; 512];
        assert!(
            !bios_finds_no_code(&mbr),
            "no signature: SeaBIOS says so itself"
        );
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        assert!(bios_finds_no_code(&mbr));
        mbr[0] = 0xeb; // a jump: boot code
        assert!(!bios_finds_no_code(&mbr));
        mbr[0] = 0;
        mbr[446] = 0x80; // a partition entry is no code
        assert!(bios_finds_no_code(&mbr));
        assert!(!bios_finds_no_code(&mbr[..511]), "short");
    }

    #[test]
    fn targets_display_as_the_specs_that_name_them() {
        assert_eq!(Target::File("/a/b.raw".into()).to_string(), "file:/a/b.raw");
        assert_eq!(Target::Qcow2("x.q".into()).to_string(), "qcow2:x.q");
        assert_eq!(Target::Dev("/dev/sdb".into()).to_string(), "dev:/dev/sdb");
        assert_eq!(
            Target::Nbd("nbd://127.0.0.1:10809/vol".into()).to_string(),
            "nbd://127.0.0.1:10809/vol"
        );
    }

    #[test]
    fn report_path_is_next_to_volume() {
        assert_eq!(
            Target::File("/v/vol.raw".into()).default_report_path(),
            PathBuf::from("/v/vol.raw.boot-report.json")
        );
    }

    #[test]
    fn firmware_saying_nothing_is_bootable_is_recognised() {
        let seabios = "SeaBIOS (version 1.16.2)\nBooting from Hard Disk...\nBoot failed: not a bootable disk\n\nNo bootable device.\n";
        assert_eq!(
            nothing_bootable(seabios).as_deref(),
            Some("No bootable device.")
        );
        let ovmf = "BdsDxe: failed to load Boot0001\nBdsDxe: No bootable option or device was found.\nBdsDxe: Press any key";
        assert_eq!(
            nothing_bootable(ovmf).as_deref(),
            Some("BdsDxe: No bootable option or device was found.")
        );
        assert_eq!(
            nothing_bootable("Booting from Hard Disk...\nGRUB loading"),
            None
        );
        // OVMF's shell after every option failed, and a FAT boot sector without a loader:
        // both waited out the whole timeout.
        let shell = "BdsDxe: failed to load Boot0002\nUEFI Interactive Shell v2.2\nShell> ";
        assert_eq!(
            nothing_bootable(shell).as_deref(),
            Some("UEFI Interactive Shell v2.2")
        );
        let fat = "Booting from Hard Disk...\nThis is not a bootable disk.  Please insert a bootable floppy and\n";
        assert!(nothing_bootable(fat).is_some());
        // GRUB at its command line or rescue shell waits for a person for ever.
        let grub = "GRUB loading.\nWelcome to GRUB!\n\n    Minimal BASH-like line editing is supported.\n\ngrub> ";
        assert_eq!(nothing_bootable(grub).as_deref(), Some("grub>"));
        let rescue = "error: file `/boot/grub/i386-pc/normal.mod' not found.\nEntering rescue mode...\ngrub rescue> ";
        assert_eq!(nothing_bootable(rescue).as_deref(), Some("grub rescue>"));
        assert!(nothing_bootable_detail("grub>", 3.0).contains("GRUB found no configuration"));
        // Its menu, and a kernel line naming grub, are no dead end.
        assert_eq!(
            nothing_bootable("GNU GRUB  version 2.06\n*Debian GNU/Linux\nBooting `Debian'\n"),
            None
        );
        // Guest writes are discarded unless a caller asks otherwise.
        assert!(BootSpec::new(Target::File("a.raw".into()), "x").snapshot);
    }

    #[test]
    fn console_cleaning_strips_escapes() {
        assert_eq!(
            clean_console(b"\x1b[2J\x1b[01;01HGRUB\r\nMGEAR-BOOT-OK x\r\n"),
            "GRUB\nMGEAR-BOOT-OK x\n"
        );
    }

    #[test]
    fn command_is_tcg_without_network_and_escapes_commas() {
        let q = LocalQemu {
            qemu: "qemu-system-x86_64".into(),
        };
        let mut spec = BootSpec::new(Target::File("/x/a,b.raw".into()), "x");
        spec.snapshot = true;
        let a = q.command(&spec, Firmware::Bios, Bus::Virtio, None).unwrap();
        let joined = a.join(" ");
        assert!(joined.contains("-accel tcg"));
        assert!(joined.contains("-nic none"));
        assert!(!joined.contains("kvm"));
        assert!(joined.contains("file=/x/a,,b.raw,format=raw,if=virtio"));
        assert!(joined.contains("-snapshot"));
        let a = q.command(&spec, Firmware::Bios, Bus::Sata, None).unwrap();
        assert!(a.join(" ").contains("-machine q35"));
    }

    #[test]
    fn firmware_detection_from_head() {
        use crate::partition::single_partition_mbr;
        let mut d = vec![0u8; 4096 * 512];
        let m = single_partition_mbr(&[], 1, 0xEF, 2048, 2048).unwrap();
        d[..512].copy_from_slice(&m);
        let t = read_table(&mut Head(d), 4096 * 512).unwrap();
        assert!(t.partitions[0].ptype.is_esp());
        // reading beyond the head is an error, not a panic
        assert!(Head(vec![0; 10])
            .read_exact_at(u64::MAX - 1, &mut [0u8; 4])
            .is_err());
    }

    #[test]
    fn auto_bus_and_firmware_follow_the_disk() {
        use crate::{build_sample_disk, Drivers, SampleDiskOptions};
        let dir = tempfile::tempdir().unwrap();
        for (drivers, bus) in [(Drivers::All, Bus::Virtio), (Drivers::IdeOnly, Bus::Ide)] {
            let disk = dir.path().join(format!("{}.raw", drivers.name()));
            let opts = SampleDiskOptions {
                drivers,
                ..Default::default()
            };
            build_sample_disk(&disk, &opts).unwrap();
            let spec = BootSpec::new(Target::File(disk), "x");
            assert_eq!(resolve_bus(&spec).0, bus, "{drivers:?}");
            let (fw, why, _) = resolve_firmware(&spec).unwrap();
            assert_eq!(fw, Firmware::Bios);
            assert!(why.contains("MBR"), "{why}");
        }
    }
}
