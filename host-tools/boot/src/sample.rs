//! The sample bootable disk used by `mgear demo` and the end-to-end tests.
//!
//! Built without root, mounts, loop devices or network, from packages of the
//! host (Debian: `linux-image-amd64`, `busybox-static`, `grub-pc-bin`,
//! `e2fsprogs`):
//!
//! ```text
//! byte 0          MBR: GRUB boot.img code (440 bytes), disk signature, one active
//!                 partition of type 0x83 from LBA 2048 to the end, 0x55AA
//! sector 1..      GRUB core.img (diskboot + compressed kernel with biosdisk,
//!                 part_msdos, ext2, normal, linux, serial); its blocklist
//!                 default (start sector 2) is right because it sits at sector 1,
//!                 and boot.img's kernel-sector field defaults to 1 -- exactly
//!                 what grub-bios-setup would write for an MBR-gap embedding
//! 1 MiB..end      ext4 "mgear-root" made by `mkfs.ext4 -d`:
//!                   /mgear-marker               the marker id
//!                   /etc/os-release             so readiness recognises Linux
//!                   /boot/vmlinuz-<ver>         the host's Debian kernel
//!                   /boot/initrd.img-<ver>      busybox initramfs (below)
//!                   /boot/grub/grub.cfg         serial console, boots at once
//!                   /lib/modules/<ver>/modules.builtin
//! ```
//! The initramfs loads only the chosen disk drivers ([`Drivers`]), waits for the
//! partition labelled `mgear-root`, mounts it read-only, prints
//! `MGEAR-BOOT-OK <id>` with the id read from the disk, and powers off. Without
//! a usable driver it prints `MGEAR-BOOT-FAIL ...` and powers off, so a wrong
//! bus fails fast instead of timing out.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

use crate::cpio;
use crate::partition::{single_partition_mbr, SECTOR};
use crate::{BootError, Result};

/// Filesystem label the sample init looks for.
pub const ROOT_LABEL: &str = "mgear-root";
/// Prefix of the success line on the console.
pub const MARKER_PREFIX: &str = "MGEAR-BOOT-OK";
/// Prefix of the failure line printed by the sample init.
pub const FAIL_PREFIX: &str = "MGEAR-BOOT-FAIL";

const FIRST_LBA: u64 = 2048;
const MIB: u64 = 1024 * 1024;
/// Fixed filesystem UUID (and directory hash seed) so equal options give equal metadata.
const FS_UUID: &str = "6d676561-722d-4000-8000-73616d706c65";
/// The data disk's file system UUID (what the sample's fstab names).
pub const SRV_UUID: &str = "6d676561-722d-4000-8000-737276000001";
/// Prefix of the line the sample prints after mounting /srv from the data disk.
pub const SRV_PREFIX: &str = "MGEAR-SRV-OK";
const DISK_SIGNATURE: u32 = 0x4D47_4541; // "MGEA"

/// Which disk drivers the sample initramfs carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Drivers {
    /// virtio (PCI + blk), IDE (ata_piix), SATA (ahci), NVMe: boots on every bus.
    All,
    /// Only IDE (ata_piix + sd_mod): boots on `--bus ide`, not on virtio, like a
    /// physical machine's initramfs built without virtio drivers.
    IdeOnly,
}

impl Drivers {
    /// Kernel modules loaded by the init script, in this order (deps are added).
    fn modules(self) -> &'static [&'static str] {
        // crc32c first: ext4 and jbd2 ask the crypto API for it at mount time and
        // there is no modprobe in the initramfs to load it on demand.
        match self {
            Drivers::All => &[
                "crc32c_generic",
                "virtio_pci",
                "virtio_blk",
                "ata_piix",
                "ahci",
                "sd_mod",
                "nvme",
                "ext4",
            ],
            Drivers::IdeOnly => &["crc32c_generic", "ata_piix", "sd_mod", "ext4"],
        }
    }

    /// Short name used in the default marker id.
    pub fn name(self) -> &'static str {
        match self {
            Drivers::All => "all",
            Drivers::IdeOnly => "ide-only",
        }
    }
}

/// Options of [`build_sample_disk`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleDiskOptions {
    /// Disk drivers in the initramfs.
    pub drivers: Drivers,
    /// Marker id printed on boot; `None` derives `sample-<drivers>` from the options.
    /// Only `[A-Za-z0-9._-]`, at most 64 characters.
    pub marker_id: Option<String>,
    /// Disk size in bytes (rounded up to MiB); at least 32 MiB.
    pub size: u64,
    /// Also build a data disk here (a whole-disk ext4 file system, mounted by
    /// the sample's `/etc/fstab` at `/srv` by UUID), of this size: the sample
    /// then boots only with it attached and prints `MGEAR-SRV-OK <id>-srv`
    /// with the id read from it. Half of it is incompressible filler.
    pub data_disk: Option<(PathBuf, u64)>,
}

impl Default for SampleDiskOptions {
    fn default() -> Self {
        SampleDiskOptions {
            drivers: Drivers::All,
            marker_id: None,
            size: 64 * MIB,
            data_disk: None,
        }
    }
}

impl SampleDiskOptions {
    /// The marker id these options produce.
    pub fn effective_marker_id(&self) -> String {
        self.marker_id
            .clone()
            .unwrap_or_else(|| format!("sample-{}", self.drivers.name()))
    }
}

/// What [`build_sample_disk`] made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SampleDisk {
    /// The raw disk image.
    pub path: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// Marker id stored on the disk.
    pub marker_id: String,
    /// The exact console line a successful boot prints.
    pub marker_line: String,
    /// Kernel version inside.
    pub kernel_version: String,
    /// Modules in the initramfs, in load order (with dependencies).
    pub modules: Vec<String>,
    /// Drivers option used.
    pub drivers: Drivers,
}

/// The sample's data disk: a whole-disk ext4 file system with UUID
/// [`SRV_UUID`] holding `mgear-marker` and incompressible filler (half the
/// disk), so a capture of it stores about that much.
fn build_data_disk(mkfs: &Path, out: &Path, size: u64, marker: &str, tmp: &Path) -> Result<()> {
    let size = size.div_ceil(MIB).max(8) * MIB;
    let dir = tmp.join("srv");
    write(&dir.join("mgear-marker"), format!("{marker}\n").as_bytes())?;
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let fill: Vec<u8> = (0..size / 2)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    write(&dir.join("filler.bin"), &fill)?;
    let _ = fs::remove_file(out);
    let f = fs::File::create(out).map_err(|e| BootError::io("creating the data disk", e))?;
    f.set_len(size)
        .map_err(|e| BootError::io("sizing the data disk", e))?;
    drop(f);
    mkfs_ext4(mkfs, "mgear-srv", SRV_UUID, &dir, out)
}

/// `mkfs.ext4 -d DIR` into `out` with a fixed label, UUID, hash seed and
/// time, so equal inputs give equal bytes.
fn mkfs_ext4(mkfs: &Path, label: &str, uuid: &str, dir: &Path, out: &Path) -> Result<()> {
    run_tool(
        Command::new(mkfs)
            .args(["-q", "-F", "-t", "ext4", "-L", label, "-U", uuid])
            .arg("-E")
            .arg(format!("hash_seed={uuid},root_owner=0:0"))
            .arg("-d")
            .arg(dir)
            .arg(out)
            .env("E2FSPROGS_FAKE_TIME", "1767225600"),
        "mkfs.ext4",
    )?;
    Ok(())
}

/// Find a program in PATH or the sbin directories (mkfs lives there and PATH
/// of a non-root user often lacks them).
pub(crate) fn find_tool(name: &str, package: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from));
    for d in dirs {
        let p = d.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(BootError::MissingTool {
        tool: name.into(),
        package: package.into(),
    })
}

/// Run a command; on failure return its stderr in the error.
pub(crate) fn run_tool(cmd: &mut Command, tool: &str) -> Result<Vec<u8>> {
    let out = cmd
        .output()
        .map_err(|e| BootError::io(format!("running {tool}"), e))?;
    if !out.status.success() {
        return Err(BootError::ToolFailed {
            tool: tool.into(),
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(out.stdout)
}

/// [`run_tool`] given at most `deadline`: a tool reading an NBD export (or RBD image) whose
/// server took the connection and answers nothing waited for ever, with no word (`mgear boot`
/// of a hung export). Killed at the deadline, said as the server not answering.
pub(crate) fn run_tool_within(
    cmd: &mut Command,
    tool: &str,
    deadline: std::time::Duration,
) -> Result<Vec<u8>> {
    use std::io::Read as _;
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| BootError::io(format!("running {tool}"), e))?;
    let drain = |r: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut v);
            }
            v
        })
    };
    let out = drain(child.stdout.take().map(|r| Box::new(r) as _));
    let err = drain(child.stderr.take().map(|r| Box::new(r) as _));
    let start = std::time::Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if start.elapsed() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(BootError::ToolFailed {
                    tool: tool.into(),
                    detail: format!(
                        "no answer within {} s: the NBD server (or the storage behind it) took \
                         the connection and stopped responding; check it, then run the same \
                         command again (MGEAR_NBD_TIMEOUT=SECONDS sets another limit)",
                        deadline.as_secs()
                    ),
                });
            }
            Ok(None) => std::thread::sleep(std::time::Duration::from_millis(50)),
            Err(e) => return Err(BootError::io(format!("waiting for {tool}"), e)),
        }
    };
    let (stdout, stderr) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    if !status.success() {
        return Err(BootError::ToolFailed {
            tool: tool.into(),
            detail: format!("{status}: {}", String::from_utf8_lossy(&stderr).trim()),
        });
    }
    Ok(stdout)
}

/// How long a tool reading a network volume may take: `MGEAR_NBD_TIMEOUT` seconds, else 300.
pub(crate) fn network_deadline() -> std::time::Duration {
    std::time::Duration::from_secs(
        std::env::var("MGEAR_NBD_TIMEOUT")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .filter(|s| *s > 0)
            .unwrap_or(300),
    )
}

fn read(p: &Path) -> Result<Vec<u8>> {
    fs::read(p).map_err(|e| BootError::io(format!("reading {}", p.display()), e))
}

fn write(p: &Path, data: &[u8]) -> Result<()> {
    if let Some(d) = p.parent() {
        fs::create_dir_all(d).map_err(|e| BootError::io(format!("creating {}", d.display()), e))?;
    }
    fs::write(p, data).map_err(|e| BootError::io(format!("writing {}", p.display()), e))
}

/// The newest `/boot/vmlinuz-<ver>` that has `/lib/modules/<ver>/modules.dep`.
fn find_kernel() -> Result<(PathBuf, String)> {
    let mut found = Vec::new();
    if let Ok(rd) = fs::read_dir("/boot") {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(ver) = name.strip_prefix("vmlinuz-") {
                if Path::new("/lib/modules")
                    .join(ver)
                    .join("modules.dep")
                    .is_file()
                {
                    found.push((e.path(), ver.to_string()));
                }
            }
        }
    }
    found.sort();
    found.pop().ok_or(BootError::MissingTool {
        tool: "/boot/vmlinuz-* with matching /lib/modules".into(),
        package: "linux-image-amd64".into(),
    })
}

/// True if the ELF binary has no program interpreter (statically linked).
fn is_static_elf(b: &[u8]) -> bool {
    let le16 = |o: usize| {
        b.get(o..o + 2)
            .map(|s| u16::from_le_bytes([s[0], s[1]]) as usize)
    };
    let le64 = |o: usize| {
        b.get(o..o + 8).map(|s| {
            let mut a = [0u8; 8];
            a.copy_from_slice(s);
            u64::from_le_bytes(a) as usize
        })
    };
    if !b.starts_with(b"\x7fELF\x02\x01") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (le64(0x20), le16(0x36), le16(0x38)) else {
        return false;
    };
    // PT_INTERP (3) means dynamically linked.
    (0..phnum).all(|i| {
        let o = phoff.saturating_add(i.saturating_mul(phentsize));
        o.checked_add(4).and_then(|e| b.get(o..e)) != Some(&3u32.to_le_bytes()[..])
    })
}

fn find_static_busybox() -> Result<Vec<u8>> {
    for p in [
        "/bin/busybox",
        "/usr/bin/busybox",
        "/usr/lib/busybox-static/busybox",
    ] {
        if let Ok(b) = fs::read(p) {
            if is_static_elf(&b) {
                return Ok(b);
            }
        }
    }
    Err(BootError::MissingTool {
        tool: "a statically linked busybox".into(),
        package: "busybox-static".into(),
    })
}

/// Parse `modules.dep` into name -> (relative path, dependency paths).
fn parse_modules_dep(text: &str) -> BTreeMap<String, (String, Vec<String>)> {
    let mut m = BTreeMap::new();
    for line in text.lines() {
        let Some((path, deps)) = line.split_once(':') else {
            continue;
        };
        let file = path.rsplit('/').next().unwrap_or(path);
        let name = file.split(".ko").next().unwrap_or(file).replace('-', "_");
        let deps = deps.split_whitespace().map(str::to_string).collect();
        m.insert(name, (path.to_string(), deps));
    }
    m
}

/// Module paths (relative to /lib/modules/<ver>) in a valid load order.
fn resolve_modules(
    dep: &BTreeMap<String, (String, Vec<String>)>,
    wanted: &[&str],
) -> Result<Vec<String>> {
    let by_path: BTreeMap<&str, &Vec<String>> =
        dep.values().map(|(p, d)| (p.as_str(), d)).collect();
    fn visit(
        path: &str,
        by_path: &BTreeMap<&str, &Vec<String>>,
        out: &mut Vec<String>,
        depth: usize,
    ) -> Result<()> {
        if out.iter().any(|p| p == path) {
            return Ok(());
        }
        if depth > 32 {
            return Err(BootError::Format(format!(
                "modules.dep has a dependency cycle through {path}"
            )));
        }
        for d in by_path.get(path).map(|v| v.as_slice()).unwrap_or(&[]) {
            visit(d, by_path, out, depth + 1)?;
        }
        out.push(path.to_string());
        Ok(())
    }
    let mut out = Vec::new();
    for w in wanted {
        let (path, _) = dep.get(*w).ok_or_else(|| {
            BootError::Unsupported(format!(
                "kernel module {w} is not in modules.dep of the host kernel (built in or \
                 missing); the sample disk needs a Debian linux-image-amd64 kernel"
            ))
        })?;
        if !path.ends_with(".ko") {
            return Err(BootError::Unsupported(format!(
                "kernel module {path} is compressed; the sample disk needs uncompressed \
                 modules (Debian linux-image-amd64 6.1 ships them so)"
            )));
        }
        visit(path, &by_path, &mut out, 0)?;
    }
    Ok(out)
}

fn init_script(ver: &str, modules: &[String]) -> String {
    let list = modules.join(" ");
    format!(
        r#"#!/bin/sh
# MotionGear sample-disk init: load the disk drivers, mount the root filesystem
# FROM THE DISK, print the marker stored on it, power off.
/bin/busybox mkdir -p /proc /sys /dev /mnt
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox --install -s /bin
export PATH=/bin
echo "MGEAR: initramfs running, loading disk drivers"
for m in {list}; do
  insmod /lib/modules/{ver}/$m || echo "MGEAR: insmod $m failed"
done
dev=
i=0
while [ $i -lt 100 ]; do
  dev=$(findfs LABEL={ROOT_LABEL} 2>/dev/null) && break
  dev=
  sleep 0.2
  i=$((i+1))
done
if [ -z "$dev" ]; then
  echo "{FAIL_PREFIX} no disk with filesystem label {ROOT_LABEL} appeared (no driver for this disk bus?); block devices: $(ls /sys/block | tr '\n' ' ')"
  poweroff -f
fi
if ! mount -t ext4 -o ro "$dev" /mnt; then
  echo "{FAIL_PREFIX} cannot mount $dev"
  poweroff -f
fi
echo "MGEAR: root filesystem $dev mounted"
# /srv as the root file system's fstab says: by UUID, on another disk.
srv=$(sed -n 's|^UUID=\([^ ]*\)  */srv .*|\1|p' /mnt/etc/fstab 2>/dev/null)
if [ -n "$srv" ]; then
  sdev=
  i=0
  while [ $i -lt 100 ]; do
    sdev=$(findfs UUID=$srv 2>/dev/null) && break
    sdev=
    sleep 0.2
    i=$((i+1))
  done
  if [ -z "$sdev" ]; then
    echo "{FAIL_PREFIX} /srv: no disk with file system UUID $srv (fstab); block devices: $(ls /sys/block | tr '\n' ' ')"
    poweroff -f
  fi
  mkdir -p /srv
  if ! mount -t ext4 -o ro "$sdev" /srv; then
    echo "{FAIL_PREFIX} cannot mount $sdev at /srv"
    poweroff -f
  fi
  echo "{SRV_PREFIX} $(cat /srv/mgear-marker) from $sdev"
  umount /srv
fi
id=$(cat /mnt/mgear-marker)
echo "{MARKER_PREFIX} $id"
umount /mnt
poweroff -f
"#
    )
}

fn build_initramfs(ver: &str, busybox: &[u8], modules: &[String]) -> Result<Vec<u8>> {
    let mut w = cpio::Writer::new();
    for d in ["bin", "dev", "proc", "sys", "mnt", "lib", "lib/modules"] {
        w.dir(d)?;
    }
    w.char_dev("dev/console", 0o600, 5, 1)?;
    w.char_dev("dev/null", 0o666, 1, 3)?;
    w.file("bin/busybox", 0o755, busybox)?;
    w.symlink("bin/sh", "busybox")?;
    w.file("init", 0o755, init_script(ver, modules).as_bytes())?;
    let base = Path::new("/lib/modules").join(ver);
    let mut dirs: Vec<String> = vec![format!("lib/modules/{ver}")];
    w.dir(&dirs[0])?;
    for m in modules {
        let mut prefix = format!("lib/modules/{ver}");
        let parent = Path::new(m)
            .parent()
            .map(|p| p.to_string_lossy().into_owned());
        for part in parent.iter().flat_map(|p| p.split('/')) {
            prefix = format!("{prefix}/{part}");
            if !dirs.contains(&prefix) {
                w.dir(&prefix)?;
                dirs.push(prefix.clone());
            }
        }
        w.file(
            &format!("lib/modules/{ver}/{m}"),
            0o644,
            &read(&base.join(m))?,
        )?;
    }
    w.finish()
}

fn valid_marker(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Build the sample bootable disk at `out` (overwritten).
///
/// Takes a few seconds; needs `mkfs.ext4`, `grub-mkimage` +
/// `/usr/lib/grub/i386-pc/boot.img`, a static busybox and a Debian kernel.
pub fn build_sample_disk(out: &Path, opts: &SampleDiskOptions) -> Result<SampleDisk> {
    let marker_id = opts.effective_marker_id();
    if !valid_marker(&marker_id) {
        return Err(BootError::Usage(format!(
            "marker id {marker_id:?} must be 1-64 characters of A-Z a-z 0-9 . _ -"
        )));
    }
    let size = opts.size.div_ceil(MIB) * MIB;
    if size < 32 * MIB {
        return Err(BootError::Usage(format!(
            "sample disk size {} bytes is too small: use at least 32 MiB",
            opts.size
        )));
    }
    if size / SECTOR > u64::from(u32::MAX) {
        return Err(BootError::Usage(
            "sample disk size must stay below 2 TiB (MBR limit)".into(),
        ));
    }
    let mkfs = find_tool("mkfs.ext4", "e2fsprogs")?;
    let mkimage = find_tool("grub-mkimage", "grub-common")?;
    let boot_img_path = Path::new("/usr/lib/grub/i386-pc/boot.img");
    if !boot_img_path.is_file() {
        return Err(BootError::MissingTool {
            tool: boot_img_path.display().to_string(),
            package: "grub-pc-bin".into(),
        });
    }
    let boot_img = read(boot_img_path)?;
    if boot_img.len() != 512 {
        return Err(BootError::Format(format!(
            "{} is {} bytes, expected 512",
            boot_img_path.display(),
            boot_img.len()
        )));
    }
    let (kernel, ver) = find_kernel()?;
    let busybox = find_static_busybox()?;
    let dep_path = Path::new("/lib/modules").join(&ver).join("modules.dep");
    let dep_text = String::from_utf8_lossy(&read(&dep_path)?).into_owned();
    let modules = resolve_modules(&parse_modules_dep(&dep_text), opts.drivers.modules())?;

    let tmp =
        tempfile::tempdir().map_err(|e| BootError::io("creating a temporary directory", e))?;
    let root = tmp.path().join("root");
    write(
        &root.join("mgear-marker"),
        format!("{marker_id}\n").as_bytes(),
    )?;
    write(
        &root.join("etc/os-release"),
        format!(
            "NAME=\"MotionGear sample\"\nID=mgear-sample\nID_LIKE=debian\n\
             PRETTY_NAME=\"MotionGear sample disk (busybox, Linux {ver}, drivers {})\"\n",
            opts.drivers.name()
        )
        .as_bytes(),
    )?;
    write(&root.join(format!("boot/vmlinuz-{ver}")), &read(&kernel)?)?;
    write(
        &root.join(format!("boot/initrd.img-{ver}")),
        &build_initramfs(&ver, &busybox, &modules)?,
    )?;
    write(
        &root.join("boot/grub/grub.cfg"),
        format!(
            "serial --unit=0 --speed=115200\nterminal_input serial\nterminal_output serial\n\
             echo 'MGEAR: GRUB loading Linux {ver}'\n\
             linux /boot/vmlinuz-{ver} console=ttyS0,115200 panic=-1 loglevel=4\n\
             initrd /boot/initrd.img-{ver}\nboot\n"
        )
        .as_bytes(),
    )?;
    let builtin = Path::new("/lib/modules").join(&ver).join("modules.builtin");
    if builtin.is_file() {
        write(
            &root.join(format!("lib/modules/{ver}/modules.builtin")),
            &read(&builtin)?,
        )?;
    }

    if let Some((data, data_size)) = &opts.data_disk {
        write(
            &root.join("etc/fstab"),
            format!("UUID={SRV_UUID} /srv ext4 ro 0 2\n").as_bytes(),
        )?;
        fs::create_dir_all(root.join("srv")).map_err(|e| BootError::io("creating /srv", e))?;
        build_data_disk(
            &mkfs,
            data,
            *data_size,
            &format!("{marker_id}-srv"),
            tmp.path(),
        )?;
    }

    // The filesystem is made in its own file, then copied behind the MBR gap:
    // mkfs never sees (or could damage) the boot sectors.
    let fs_img = tmp.path().join("fs.img");
    let fs_size = size - FIRST_LBA * SECTOR;
    let f = fs::File::create(&fs_img).map_err(|e| BootError::io("creating fs image", e))?;
    f.set_len(fs_size)
        .map_err(|e| BootError::io("sizing fs image", e))?;
    drop(f);
    mkfs_ext4(&mkfs, ROOT_LABEL, FS_UUID, &root, &fs_img)?;

    let core = tmp.path().join("core.img");
    run_tool(
        Command::new(&mkimage)
            .args(["-O", "i386-pc", "-p", "(hd0,msdos1)/boot/grub", "-o"])
            .arg(&core)
            .args([
                "biosdisk",
                "part_msdos",
                "ext2",
                "normal",
                "linux",
                "serial",
                "terminal",
                "echo",
            ]),
        "grub-mkimage",
    )?;
    let core_img = read(&core)?;
    if core_img.len() as u64 > (FIRST_LBA - 1) * SECTOR {
        return Err(BootError::Format(format!(
            "GRUB core.img is {} bytes and does not fit the 1 MiB MBR gap",
            core_img.len()
        )));
    }

    let mbr = single_partition_mbr(
        &boot_img[..440],
        DISK_SIGNATURE,
        0x83,
        FIRST_LBA as u32,
        (fs_size / SECTOR) as u32,
    )?;
    let io = |e| BootError::io(format!("writing {}", out.display()), e);
    let mut disk = fs::File::create(out).map_err(io)?;
    disk.set_len(size).map_err(io)?;
    disk.write_all(&mbr).map_err(io)?;
    disk.write_all(&core_img).map_err(io)?;
    disk.seek(SeekFrom::Start(FIRST_LBA * SECTOR)).map_err(io)?;
    let mut fsf = fs::File::open(&fs_img).map_err(|e| BootError::io("reopening fs image", e))?;
    std::io::copy(&mut fsf, &mut disk).map_err(io)?;
    disk.sync_all().map_err(io)?;

    Ok(SampleDisk {
        path: out.to_path_buf(),
        size,
        marker_line: format!("{MARKER_PREFIX} {marker_id}"),
        marker_id,
        kernel_version: ver,
        modules,
        drivers: opts.drivers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko\n\
kernel/lib/crc16.ko:\nkernel/fs/mbcache.ko:\nkernel/fs/jbd2/jbd2.ko:\n\
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n\
kernel/drivers/virtio/virtio.ko:\nkernel/drivers/virtio/virtio_ring.ko:\n\
kernel/drivers/a/x-y.ko.xz:\n";

    #[test]
    fn resolves_dependencies_before_modules() {
        let dep = parse_modules_dep(DEP);
        let order = resolve_modules(&dep, &["virtio_blk", "ext4"]).unwrap();
        assert_eq!(
            order,
            [
                "kernel/drivers/virtio/virtio.ko",
                "kernel/drivers/virtio/virtio_ring.ko",
                "kernel/drivers/block/virtio_blk.ko",
                "kernel/lib/crc16.ko",
                "kernel/fs/mbcache.ko",
                "kernel/fs/jbd2/jbd2.ko",
                "kernel/fs/ext4/ext4.ko",
            ]
        );
        assert!(resolve_modules(&dep, &["nosuch"]).is_err());
        assert!(
            resolve_modules(&dep, &["x_y"]).is_err(),
            "compressed module"
        );
    }

    #[test]
    fn marker_ids_are_checked_and_derived() {
        assert!(valid_marker("sample-all_1.2"));
        assert!(!valid_marker("a b"));
        assert!(!valid_marker("$(reboot)"));
        assert!(!valid_marker(""));
        let o = SampleDiskOptions {
            drivers: Drivers::IdeOnly,
            ..Default::default()
        };
        assert_eq!(o.effective_marker_id(), "sample-ide-only");
        assert_eq!(o.effective_marker_id(), o.clone().effective_marker_id());
    }

    #[test]
    fn static_elf_detection() {
        assert!(!is_static_elf(b"not an elf"));
        assert!(!is_static_elf(b"\x7fELF\x02\x01"));
        if let Ok(sh) = fs::read("/bin/sh") {
            // /bin/sh on Debian is dynamically linked dash.
            assert!(!is_static_elf(&sh));
        }
    }
}
