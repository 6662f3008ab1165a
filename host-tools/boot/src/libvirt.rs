//! The `libvirt:POOL/NAME` target: upload a volume into a libvirt storage pool
//! and boot it as a libvirt domain, proving the boot like [`crate::LocalQemu`].
//!
//! Everything goes through the `virsh` CLI (package `libvirt-clients`), so no
//! libvirt headers are needed to build. The domain is always `type='qemu'`
//! (TCG, never KVM), has no network interface at all (libvirt starts QEMU with
//! `-nodefaults`, so none appears implicitly), and writes its serial console
//! to a file that [`LibvirtGuest`] polls; [`crate::prove_boot`] watches it for
//! the marker regex like every driver's console. The domain is destroyed and
//! undefined on every exit path ([`LibvirtGuest`]'s `stop` and `Drop`); one a killed
//! `mgear` (SIGKILL: no exit path runs) left behind is removed by the next libvirt boot
//! ([`sweep_abandoned`]).

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::boot::{bus_for, BootReport, BootSpec, Bus, Firmware, Outcome, Target};
use crate::inspect;
use crate::proof::{prove_boot, ConsoleRead, Expectation, Guest, GuestState, Setup, Start};
use crate::sample::{find_tool, run_tool};
use crate::{BootError, Result};

/// The system libvirt daemon, the one `scripts/libvirtd.sh` starts.
pub const DEFAULT_CONN: &str = "qemu:///system";

/// How often the serial log and the domain state are polled.
const POLL: Duration = Duration::from_millis(200);

/// A `libvirt:POOL/NAME` target as the user wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibvirtTarget {
    /// Storage pool name.
    pub pool: String,
    /// Volume name inside the pool.
    pub name: String,
}

impl LibvirtTarget {
    /// `Some` for strings starting with `libvirt:` (so callers can try this
    /// before [`Target`]'s parser), `None` for every other target.
    pub fn parse_prefixed(s: &str) -> Option<Result<Self>> {
        s.strip_prefix("libvirt:").map(Self::from_str)
    }
}

impl FromStr for LibvirtTarget {
    type Err = BootError;
    /// Parse `POOL/NAME` (without the `libvirt:` prefix).
    fn from_str(s: &str) -> Result<Self> {
        let (pool, name) = s.split_once('/').ok_or_else(|| {
            BootError::Usage(format!(
                "libvirt target {s:?} needs a pool and a volume name: libvirt:POOL/NAME"
            ))
        })?;
        check_name("pool", pool)?;
        check_name("volume", name)?;
        Ok(LibvirtTarget {
            pool: pool.into(),
            name: name.into(),
        })
    }
}

impl std::fmt::Display for LibvirtTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "libvirt:{}/{}", self.pool, self.name)
    }
}

/// Names go into domain XML and virsh arguments: keep them to a safe alphabet
/// so neither needs quoting and none looks like an option or a path.
fn check_name(what: &str, s: &str) -> Result<()> {
    let ok = !s.is_empty()
        && s.len() <= 200
        && !s.starts_with(['.', '-'])
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+'));
    if ok {
        Ok(())
    } else {
        Err(BootError::Usage(format!(
            "{what} name {s:?} is not usable: use 1-200 of A-Z a-z 0-9 . _ - +, not starting with . or -"
        )))
    }
}

/// A volume in a libvirt storage pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeRef {
    /// libvirt connection URI.
    pub conn: String,
    /// Storage pool name.
    pub pool: String,
    /// Volume name.
    pub name: String,
    /// Where the volume lives on the host (`virsh vol-path`).
    pub path: PathBuf,
    /// Volume capacity in bytes.
    pub capacity: u64,
}

impl VolumeRef {
    /// Look up an existing volume.
    pub fn lookup(conn: &str, pool: &str, name: &str) -> Result<Self> {
        check_name("pool", pool)?;
        check_name("volume", name)?;
        let path = virsh(conn, &["vol-path", "--pool", pool, name])?;
        let info = virsh(conn, &["vol-info", "--bytes", "--pool", pool, name])?;
        Ok(VolumeRef {
            conn: conn.into(),
            pool: pool.into(),
            name: name.into(),
            path: PathBuf::from(path.trim()),
            capacity: parse_capacity(&info)?,
        })
    }

    /// The volume as a boot target for [`LibvirtBoot`] (its host path).
    pub fn target(&self) -> Target {
        Target::File(self.path.clone())
    }

    /// Copy the volume's bytes into `out` (`virsh vol-download`).
    pub fn download(&self, out: &Path) -> Result<()> {
        let out = path_arg(out)?;
        virsh(
            &self.conn,
            &["vol-download", "--pool", &self.pool, &self.name, out],
        )
        .map(|_| ())
    }

    /// Delete the volume from its pool.
    pub fn delete(&self) -> Result<()> {
        virsh(
            &self.conn,
            &["vol-delete", "--pool", &self.pool, &self.name],
        )
        .map(|_| ())
    }
}

/// `virsh vol-info --bytes` prints `Capacity:       67108864 bytes`.
fn parse_capacity(info: &str) -> Result<u64> {
    info.lines()
        .find_map(|l| l.strip_prefix("Capacity:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| BootError::Format(format!("virsh vol-info printed no capacity: {info:?}")))
}

fn path_arg(p: &Path) -> Result<&str> {
    p.to_str().ok_or_else(|| {
        BootError::Usage(format!(
            "path {} is not UTF-8; virsh needs a UTF-8 path",
            p.display()
        ))
    })
}

/// Run `virsh -c CONN ARGS...` and return its stdout.
fn virsh(conn: &str, args: &[&str]) -> Result<String> {
    let virsh = find_tool("virsh", "libvirt-clients")?;
    let tool = format!("virsh {}", args.first().copied().unwrap_or_default());
    let out = run_tool(Command::new(virsh).arg("-c").arg(conn).args(args), &tool)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Create volume `name` in `pool`, as large as the raw image `raw`, and upload
/// the image into it. Fails if the volume already exists (delete it first or
/// choose another name); a volume whose upload failed is deleted again.
pub fn upload_volume(conn: &str, pool: &str, name: &str, raw: &Path) -> Result<VolumeRef> {
    check_name("pool", pool)?;
    check_name("volume", name)?;
    let size = std::fs::metadata(raw)
        .map_err(|e| BootError::io(format!("volume image {}", raw.display()), e))?
        .len();
    let raw_arg = path_arg(raw)?;
    if virsh(conn, &["vol-info", "--pool", pool, name]).is_ok() {
        return Err(BootError::Usage(format!(
            "volume {name} already exists in pool {pool}: delete it (virsh vol-delete --pool {pool} {name}) or choose another name"
        )));
    }
    virsh(
        conn,
        &[
            "vol-create-as",
            pool,
            name,
            &size.to_string(),
            "--format",
            "raw",
        ],
    )?;
    let uploaded = virsh(
        conn,
        &["vol-upload", "--sparse", "--pool", pool, name, raw_arg],
    )
    .and_then(|_| VolumeRef::lookup(conn, pool, name));
    if uploaded.is_err() {
        let _ = virsh(conn, &["vol-delete", "--pool", pool, name]);
    }
    uploaded
}

/// Boot driver that runs the volume as a libvirt domain.
#[derive(Debug, Clone)]
pub struct LibvirtBoot {
    /// libvirt connection URI, e.g. [`DEFAULT_CONN`].
    pub conn: String,
}

impl LibvirtBoot {
    /// A driver for `conn` that cleans up its domain.
    pub fn new(conn: impl Into<String>) -> Self {
        LibvirtBoot { conn: conn.into() }
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

/// Where the domain's disk comes from.
enum DiskSource<'a> {
    /// A pool volume, by pool and name.
    Volume(&'a VolumeRef),
    /// The volume's file, with `<transient/>`: libvirt only supports transient
    /// (guest writes discarded) disks of type `file`.
    TransientFile(&'a Path),
}

/// Domain XML. Layout: `type='qemu'` (TCG); BIOS or EFI firmware; the
/// disks in order (the first boots); serial port 0 (and the console) to `serial_log`; no `<interface>`;
/// power-off, reboot and crash all end the domain (like QEMU `-no-reboot`).
fn domain_xml(
    name: &str,
    spec: &BootSpec,
    firmware: Firmware,
    bus: Bus,
    disks: &[DiskSource],
    serial_log: &Path,
) -> Result<String> {
    let (machine, dev, bus_name) = match bus {
        Bus::Virtio | Bus::Auto => ("pc", "vda", "virtio"),
        Bus::Ide => ("pc", "hda", "ide"),
        Bus::Sata => ("q35", "sda", "sata"),
        Bus::Nvme => {
            return Err(BootError::Unsupported(
                "libvirt 9 has no NVMe disk bus: boot NVMe with the local QEMU driver".into(),
            ))
        }
    };
    let os = match firmware {
        Firmware::Uefi => format!(
            "<os firmware='efi'><type arch='x86_64' machine='{machine}'>hvm</type>\
             <firmware><feature enabled='no' name='secure-boot'/></firmware><boot dev='hd'/></os>"
        ),
        Firmware::Bios | Firmware::Auto => {
            format!("<os><type arch='x86_64' machine='{machine}'>hvm</type><boot dev='hd'/></os>")
        }
    };
    let mut source = String::new();
    for (i, disk) in disks.iter().enumerate() {
        // vda, vdb, ... in the machine's order: the first one boots.
        let letter = char::from(b'a' + u8::try_from(i).unwrap_or(25).min(25));
        let dev = format!("{}{letter}", &dev[..2]);
        source.push_str(&match disk {
            DiskSource::Volume(v) => format!(
                "<disk type='volume' device='disk'><driver name='qemu' type='raw'/>\
                 <source pool='{}' volume='{}'/><target dev='{dev}' bus='{bus_name}'/></disk>",
                xml_escape(&v.pool),
                xml_escape(&v.name)
            ),
            DiskSource::TransientFile(p) => format!(
                "<disk type='file' device='disk'><driver name='qemu' type='raw'/>\
                 <source file='{}'/><target dev='{dev}' bus='{bus_name}'/><transient/></disk>",
                xml_escape(path_arg(p)?)
            ),
        });
    }
    let log = xml_escape(path_arg(serial_log)?);
    Ok(format!(
        "<domain type='qemu'>\n\
         <name>{}</name>\n\
         <description>{DESCRIPTION}</description>\n\
         <memory unit='MiB'>{}</memory>\n\
         <vcpu>1</vcpu>\n\
         {os}\n\
         <features><acpi/></features>\n\
         <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>\n\
         <devices>\n\
         {source}\n\
         <serial type='file'><source path='{log}'/><target port='0'/></serial>\n\
         <console type='file'><source path='{log}'/><target type='serial' port='0'/></console>\n\
         <memballoon model='none'/>\n\
         </devices>\n\
         </domain>\n",
        xml_escape(name),
        spec.memory_mib
    ))
}

/// Firmware from the disk: UEFI when it has an EFI System Partition.
fn resolve_firmware(spec: &BootSpec, facts: Option<&inspect::DiskFacts>) -> (Firmware, String) {
    match (spec.firmware, facts) {
        (Firmware::Bios | Firmware::Uefi, _) => (spec.firmware, "requested".into()),
        (Firmware::Auto, Some(f)) if f.uefi_bootable => (
            Firmware::Uefi,
            "the disk has an EFI System Partition".into(),
        ),
        (Firmware::Auto, Some(_)) => (Firmware::Bios, "no EFI System Partition".into()),
        (Firmware::Auto, None) => (
            Firmware::Bios,
            "disk not readable here; BIOS is libvirt's default".into(),
        ),
    }
}

/// Read what was appended to the serial log since `offset`.
fn read_new(path: &Path, offset: &mut u64) -> Result<Vec<u8>> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        // libvirt creates the file when QEMU starts.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(BootError::io(format!("opening {}", path.display()), e)),
    };
    let mut new = Vec::new();
    f.seek(SeekFrom::Start(*offset))
        .and_then(|_| f.read_to_end(&mut new))
        .map(|n| *offset += n as u64)
        .map_err(|e| BootError::io(format!("reading {}", path.display()), e))?;
    Ok(new)
}

fn tail_str(s: &str, cap: usize) -> String {
    let mut cut = s.len().saturating_sub(cap);
    while !s.is_char_boundary(cut) {
        cut += 1;
    }
    s[cut..].to_string()
}

/// What every domain a boot defines says of itself (`virsh desc`): only a domain that says it,
/// named for a process that is gone, is removed by [`sweep_abandoned`].
const DESCRIPTION: &str = "mgear boot: removed when the boot ends";

/// Removes the domains of boots whose `mgear` was killed before it could (SIGKILL, a host
/// crash): `mgear-boot-<pid>-...` saying [`DESCRIPTION`] where process `<pid>` is gone, with
/// the serial log's directory. A killed boot's guest ran on, holding its volume, and every
/// later boot of that volume found it in use. The names removed, for the caller to say.
pub fn sweep_abandoned(conn: &str) -> Vec<String> {
    let Ok(list) = virsh(conn, &["list", "--all", "--name"]) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for name in list.lines().map(str::trim) {
        let Some(pid) = name
            .strip_prefix("mgear-boot-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if !virsh(conn, &["desc", name]).is_ok_and(|d| d.trim() == DESCRIPTION) {
            continue;
        }
        // A domain still starting (its boot killed during `virsh start`) holds libvirt's job
        // lock for a while: destroy and undefine then fail at first, and the domain ran on.
        for attempt in 0..10 {
            let _ = virsh(conn, &["destroy", name]);
            let _ = virsh(conn, &["undefine", "--nvram", name]);
            let listed = virsh(conn, &["list", "--all", "--name"]);
            if listed.is_ok_and(|l| !l.lines().any(|l| l.trim() == name)) {
                removed.push(name.to_string());
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(200 << attempt.min(4)));
        }
        // The serial log's directory (`tempfile` adds a suffix to the name's prefix).
        if let Ok(dir) = std::fs::read_dir(std::env::temp_dir()) {
            let prefix = format!("{name}-");
            for e in dir.flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }
    removed
}

/// A domain name unique on this host: `mgear-boot-<pid>-<nanoseconds>`.
fn domain_name() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("mgear-boot-{}-{nanos}", std::process::id())
}

impl LibvirtBoot {
    /// Boot `spec.target` as a libvirt domain and prove it came up
    /// ([`prove_boot`] over a [`LibvirtGuest`]). `spec.target` must be the
    /// host path of a pool volume, e.g. [`VolumeRef::target`];
    /// `spec.snapshot` boots it as a transient disk.
    pub fn boot(&self, spec: &BootSpec) -> Result<BootReport> {
        let expect = Expectation::new(&spec.wait_for, spec.timeout)?.with_stop(spec.stop);
        let mut guest = self.guest(spec)?;
        prove_boot(&mut guest, &expect)
    }

    /// The pool volume whose file is `path` (virsh accepts a volume's path
    /// in place of its name).
    fn volume_of(&self, path: &Path) -> Result<VolumeRef> {
        let path_s = path_arg(path)?;
        let pool = virsh(&self.conn, &["vol-pool", path_s]).map_err(|e| {
            BootError::Usage(format!(
                "{} is not a volume of a libvirt pool on {} ({e}): upload it first (libvirt:POOL/NAME)",
                path.display(),
                self.conn
            ))
        })?;
        let vol_name = virsh(&self.conn, &["vol-name", path_s])?;
        VolumeRef::lookup(&self.conn, pool.trim(), vol_name.trim())
    }

    /// The domain that boots `spec.target` with `spec.data_disks` attached
    /// after it, ready to define and start.
    pub fn guest(&self, spec: &BootSpec) -> Result<LibvirtGuest> {
        let path = match &spec.target {
            Target::File(p) => p,
            other => {
                return Err(BootError::Usage(format!(
                    "the libvirt driver boots pool volumes, not {other}: upload it first (libvirt:POOL/NAME)"
                )))
            }
        };
        let vol = self.volume_of(path)?;
        let mut data = Vec::new();
        for d in &spec.data_disks {
            match d {
                Target::File(p) => data.push(self.volume_of(p)?),
                other => {
                    return Err(BootError::Usage(format!(
                        "the libvirt driver attaches pool volumes, not {other}: upload it first \
                         (libvirt:POOL/NAME)"
                    )))
                }
            }
        }

        let facts = inspect::inspect_path(&vol.path).ok();
        let (firmware, firmware_reason) = resolve_firmware(spec, facts.as_ref());
        let (bus, bus_reason) = bus_for(spec.bus, facts.as_ref());

        let name = domain_name();
        let tmp = tempfile::Builder::new()
            .prefix(&format!("{name}-"))
            .tempdir()
            .map_err(|e| BootError::io("creating a temporary directory", e))?;
        let serial_log = tmp.path().join("serial.log");
        let disks: Vec<DiskSource> = std::iter::once(&vol)
            .chain(data.iter())
            .map(|v| {
                if spec.snapshot {
                    DiskSource::TransientFile(&v.path)
                } else {
                    DiskSource::Volume(v)
                }
            })
            .collect();
        let xml = domain_xml(&name, spec, firmware, bus, &disks, &serial_log)?;
        let xml_path = tmp.path().join("domain.xml");
        std::fs::write(&xml_path, &xml)
            .map_err(|e| BootError::io(format!("writing {}", xml_path.display()), e))?;
        let command: Vec<String> = ["virsh", "-c", &self.conn, "define", path_arg(&xml_path)?]
            .map(String::from)
            .to_vec();
        Ok(LibvirtGuest {
            conn: self.conn.clone(),
            name,
            _tmp: tmp,
            serial_log,
            xml_path,
            setup: Setup {
                driver: "libvirt".into(),
                target: format!("libvirt:{}/{}", vol.pool, vol.name),
                firmware,
                firmware_reason,
                bus,
                bus_reason,
                command,
                subject: "guest".into(),
                console: "the serial console".into(),
            },
            defined: false,
            offset: 0,
            start_error: String::new(),
            log: String::new(),
        })
    }
}

/// One libvirt domain (TCG, no network) whose serial console is a file
/// polled every 200 ms. Destroyed and undefined when stopped or dropped.
pub struct LibvirtGuest {
    conn: String,
    name: String,
    /// Holds the domain XML and the serial log.
    _tmp: tempfile::TempDir,
    serial_log: PathBuf,
    xml_path: PathBuf,
    setup: Setup,
    /// Defined and not yet cleaned up.
    defined: bool,
    /// How far the serial log has been read.
    offset: u64,
    start_error: String,
    log: String,
}

impl LibvirtGuest {
    /// libvirt (through virtlogd) keeps QEMU's stderr in its per-domain log.
    fn qemu_log(&self) -> String {
        std::fs::read(format!("/var/log/libvirt/qemu/{}.log", self.name))
            .map(|b| tail_str(&String::from_utf8_lossy(&b), 16 * 1024))
            .unwrap_or_default()
    }

    fn log_now(&self) -> String {
        let qemu_log = self.qemu_log();
        if self.start_error.is_empty() {
            qemu_log
        } else {
            format!("{}\n{qemu_log}", self.start_error)
        }
    }

    fn undefine(&mut self) {
        if self.defined {
            let _ = virsh(&self.conn, &["destroy", &self.name]);
            let _ = virsh(&self.conn, &["undefine", "--nvram", &self.name]);
        }
        self.defined = false;
    }
}

impl Guest for LibvirtGuest {
    fn start(&mut self) -> Result<Start> {
        virsh(&self.conn, &["define", path_arg(&self.xml_path)?])?;
        self.defined = true;
        match virsh(&self.conn, &["start", &self.name]) {
            Ok(_) => Ok(Start::Running),
            Err(e) => {
                self.start_error = e.to_string();
                Ok(Start::NotRunning {
                    outcome: Outcome::QemuFailed,
                    detail: format!(
                        "libvirt could not run the domain: {}",
                        self.log_now().trim()
                    ),
                })
            }
        }
    }

    fn console(&mut self, wait: Duration) -> Result<ConsoleRead> {
        let mut new = read_new(&self.serial_log, &mut self.offset)?;
        if new.is_empty() && !wait.is_zero() {
            std::thread::sleep(wait.min(POLL));
            new = read_new(&self.serial_log, &mut self.offset)?;
        }
        Ok(if new.is_empty() {
            ConsoleRead::Nothing
        } else {
            ConsoleRead::Bytes(new)
        })
    }

    fn state(&mut self) -> Result<GuestState> {
        let state = virsh(&self.conn, &["domstate", &self.name]).unwrap_or_default();
        Ok(if state.trim().starts_with("running") {
            GuestState::Running
        } else if state.contains("crashed") {
            GuestState::Failed {
                detail: format!(
                    "libvirt could not run the domain: {}",
                    self.log_now().trim()
                ),
            }
        } else {
            GuestState::Stopped {
                how: "the guest powered off or rebooted".into(),
            }
        })
    }

    fn stop(&mut self) {
        self.undefine();
        self.log = self.log_now();
    }

    fn log(&mut self) -> String {
        self.log.clone()
    }

    fn setup(&self) -> Setup {
        self.setup.clone()
    }
}

impl Drop for LibvirtGuest {
    fn drop(&mut self) {
        self.undefine();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_libvirt_targets() {
        let t = LibvirtTarget::parse_prefixed("libvirt:mgear/vol-1.raw")
            .unwrap()
            .unwrap();
        assert_eq!(t.pool, "mgear");
        assert_eq!(t.name, "vol-1.raw");
        assert_eq!(t.to_string(), "libvirt:mgear/vol-1.raw");
        assert!(LibvirtTarget::parse_prefixed("file:/x").is_none());
        for bad in [
            "mgear", "mgear/", "/v", "p/a/b", "p/-rm", "p/.x", "p/a b", "p/a'b",
        ] {
            assert!(LibvirtTarget::from_str(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn capacity_from_vol_info() {
        let info = "Name:           v\nType:           file\nCapacity:       67108864 bytes\nAllocation:     4096 bytes\n";
        assert_eq!(parse_capacity(info).unwrap(), 67108864);
        assert!(parse_capacity("Name: v\n").is_err());
    }

    #[test]
    fn domain_is_tcg_without_network_and_escapes_paths() {
        let vol = VolumeRef {
            conn: DEFAULT_CONN.into(),
            pool: "mgear".into(),
            name: "v.raw".into(),
            path: "/p/v.raw".into(),
            capacity: 1,
        };
        let spec = BootSpec::new(vol.target(), "x");
        let log = Path::new("/tmp/a&b/serial.log");
        let xml = domain_xml(
            "d",
            &spec,
            Firmware::Bios,
            Bus::Virtio,
            &[
                DiskSource::Volume(&vol),
                DiskSource::TransientFile(Path::new("/p/srv.raw")),
            ],
            log,
        )
        .unwrap();
        assert!(xml.starts_with("<domain type='qemu'>"));
        // The machine's disks in order: the first boots, the second is vdb.
        let (a, b) = (
            xml.find("dev='vda'").unwrap(),
            xml.find("dev='vdb'").unwrap(),
        );
        assert!(a < b && xml.contains("<source file='/p/srv.raw'/>"));
        assert!(!xml.contains("kvm"));
        assert!(!xml.contains("<interface"));
        assert!(xml.contains("<source pool='mgear' volume='v.raw'/>"));
        assert!(xml.contains("bus='virtio'"));
        assert!(xml.contains("/tmp/a&amp;b/serial.log"));
        let xml = domain_xml(
            "d",
            &spec,
            Firmware::Uefi,
            Bus::Sata,
            &[DiskSource::TransientFile(&vol.path)],
            log,
        )
        .unwrap();
        assert!(xml.contains("machine='q35'") && xml.contains("bus='sata'"));
        assert!(xml.contains("<transient/>") && xml.contains("firmware='efi'"));
        assert!(matches!(
            domain_xml(
                "d",
                &spec,
                Firmware::Bios,
                Bus::Nvme,
                &[DiskSource::Volume(&vol)],
                log
            ),
            Err(BootError::Unsupported(_))
        ));
    }

    #[test]
    fn non_file_targets_are_refused_before_libvirt_is_asked() {
        let b = LibvirtBoot::new(DEFAULT_CONN);
        let spec = BootSpec::new(Target::Nbd("nbd://127.0.0.1:1/x".into()), "x");
        assert!(matches!(b.boot(&spec), Err(BootError::Usage(_))));
        let spec = BootSpec::new(Target::File("/x".into()), "(");
        assert!(matches!(b.boot(&spec), Err(BootError::Usage(_))));
    }
}
