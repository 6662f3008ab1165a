//! Opening a parsed `--target` ([`crate::spec::Target`]) as a writable
//! volume: the one place that maps target kinds to `mgear_volume`'s
//! implementations (and `cinder:` to `crate::cloud_target`). Parsing stays in
//! `crate::spec`, at the bottom of the library; opening needs the cloud and
//! the device guard, so it sits above them, below `ingest` and `serve`.

use std::path::PathBuf;

use mgear_volume::{
    DeviceVolume, EbsSnapshotVolume, Existing, FileVolume, LibvirtVolume, NbdVolume, Prepare,
    Qcow2Volume, RbdVolume, Volume,
};

use crate::cloud_target::CaptureFacts;
use crate::exit::usage;
use crate::spec::Target;

/// Refuse (exit 2) to `doing` (boot, serve) a volume an ingest began and did not finish: it
/// holds part of a disk (its first chunk is written last, but a disk that was there before
/// may still boot, over new data), and a serve's sync into it was undone when that ingest was
/// run again to finish it (both said they verified). A device, NBD export or RBD image has no
/// unfinished name of its own: the ingest's marker in the default state dir says so until the
/// read-back passed; a file's is `NAME.partial`.
pub fn refuse_unfinished(spec: &str, doing: &str) -> crate::Result<()> {
    let Ok(t) = Target::parse(spec, crate::spec::Bare::Existing) else {
        return Ok(());
    };
    if let Target::File(p) | Target::Qcow2(p) = &t {
        // By the name it has and by the one it resolves to: a link to a `.partial` was booted.
        let resolved = std::fs::canonicalize(p).ok();
        if let Some(done) = [Some(p), resolved.as_ref()]
            .into_iter()
            .flatten()
            .find_map(|p| {
                p.to_str()?
                    .strip_suffix(".partial")
                    .filter(|s| !s.is_empty())
            })
        {
            return Err(usage(format!(
                "--target {spec}: {} is the volume of an ingest that has not finished (it is \
                 renamed {done} once verified): it holds part of a disk. Run that ingest again \
                 to finish it, then {doing} {done}",
                p.display()
            )));
        }
        // The file behind a loop device such an ingest was writing (named `dev:` too, below).
        if let Ok(dir) = state_dir(None) {
            if DeviceVolume::backing_unfinished(p, &dir) {
                return Err(usage(format!(
                    "--target {spec}: {} is the file behind a loop device an ingest began to \
                     write and did not finish (its marker is in {}): it holds part of a disk. \
                     Run that ingest again to finish it, then {doing} it",
                    p.display(),
                    dir.display()
                )));
            }
        }
    }
    let Ok(dir) = state_dir(None) else {
        return Ok(());
    };
    let unfinished = match &t {
        // Whatever the prefix says the path is: the file behind a loop device given as `dev:`,
        // a block device given as `file:` (a file's own check is above).
        Target::Dev(p) => {
            DeviceVolume::marked_unfinished(p, &dir) || DeviceVolume::backing_unfinished(p, &dir)
        }
        Target::File(p) | Target::Qcow2(p) => DeviceVolume::marked_unfinished(p, &dir),
        Target::Nbd(u) => NbdVolume::marked_unfinished(u, &dir),
        Target::Rbd(r) => RbdVolume::marked_unfinished(r, &dir),
        _ => false,
    };
    if unfinished {
        return Err(usage(format!(
            "--target {spec}: an ingest into it began and was not finished (its marker is in {}): \
             the volume holds part of a disk. Run that ingest again to finish it, then {doing} it",
            dir.display()
        )));
    }
    Ok(())
}

/// Open the target for an ingest (create it, or reopen what an
/// interrupted run left); the one place that maps kinds to volumes.
/// `capture` names what is written (a Cinder volume carries it as metadata).
/// `media`: the boot sectors of the media the ingest reads ([`crate::medium::Where::boot_sectors`]):
/// an NBD export whose first sector is one of them is the medium served another way (the
/// image behind a simulator, by its socket), refused even with `--force`.
pub fn open_for_ingest(
    target: &Target,
    prep: &Prepare,
    capture: &CaptureFacts,
    media: &[(String, [u8; 512])],
) -> crate::Result<Box<dyn Volume>> {
    refuse_held(target)?;
    let v: Box<dyn Volume> = match target {
        Target::File(p) => Box::new(FileVolume::create(p, prep)?),
        Target::Qcow2(p) => Box::new(Qcow2Volume::create(p, prep)?),
        Target::Dev(p) => {
            // Whatever the device holds is checked before the first byte
            // is written (open zeroes the head of a fresh device).
            if !DeviceVolume::unfinished(p, prep) {
                crate::guard::refuse_if_holds_data(p, prep.force, "ingest")?;
            }
            Box::new(DeviceVolume::open(p, prep)?)
        }
        // An export always exists: what it holds is checked, as a dev:'s is,
        // before the first byte is written (unless this ingest wrote it).
        Target::Nbd(u) => Box::new(NbdVolume::open(u, prep, |head, tail, size| {
            if let Some(first) = head.get(..512).and_then(|b| <&[u8; 512]>::try_from(b).ok()) {
                if let Some((name, _)) = media
                    .iter()
                    .find(|(_, b)| crate::medium::same_fat_volume(first, b))
                {
                    return Err(mgear_volume::Error::Usage(format!(
                        "--target {u} is {name} (the same FAT volume: its serial, size and \
                         label), served another way: ingest would overwrite the shipment it \
                         reads. Give a volume that is not the medium (--force does not change \
                         this)"
                    )));
                }
            }
            let found = crate::guard::scan(head, tail, size);
            match found.is_empty() || prep.force {
                true => Ok(()),
                false => Err(mgear_volume::Error::Usage(format!(
                    "NBD target {u} holds {}: ingest would destroy it. Check that this is the \
                     right export, then pass --force",
                    crate::guard::describe(&found)
                ))),
            }
        })?),
        Target::Libvirt(t) => Box::new(LibvirtVolume::open(
            mgear_boot::libvirt::DEFAULT_CONN,
            &t.pool,
            &t.name,
            prep,
        )?),
        Target::EbsSnapshot { name, opts } => {
            Box::new(EbsSnapshotVolume::open(name, opts.clone(), prep)?)
        }
        Target::Rbd(r) => Box::new(RbdVolume::open(r, prep, Existing::CreateOrForce)?),
        Target::Cinder(name) => crate::cloud_target::open(name, prep, capture)?,
    };
    Ok(v)
}

/// Refuse a local volume another process holds open for writing: a running VM's disk (QEMU
/// opens a device without O_EXCL, so only a mount was refused), a `mgear serve` holding the
/// same disk under another name (a second loop device over its file). `--force` wrote the
/// disk under the running machine; a `file:` volume replaced left the VM on the old one,
/// deleted, losing all it wrote.
fn refuse_held(target: &Target) -> crate::Result<()> {
    let (Target::File(p) | Target::Qcow2(p) | Target::Dev(p)) = target else {
        return Ok(());
    };
    // A character device (`dev:/dev/null`, which every shell holds open for writing) is no
    // volume: its open says so. "Open for writing by process ... (bash)" sent the operator
    // looking for a VM.
    {
        use std::os::unix::fs::FileTypeExt;
        if std::fs::metadata(p).is_ok_and(|m| m.file_type().is_char_device()) {
            return Ok(());
        }
    }
    // Another `mgear ingest` into it is named as such by the ingest lock, which follows.
    let ingest = |cmd: &str| {
        let mut w = cmd.split_whitespace();
        w.next().is_some_and(|b| b.ends_with("mgear")) && w.next() == Some("ingest")
    };
    if let Some((pid, cmd)) = crate::guard::writer_of(p).filter(|(_, c)| !ingest(c)) {
        return Err(crate::exit::coded_hint(
            crate::exit::USAGE,
            format!(
                "--target {target} is open for writing by process {pid} ({cmd}): a running \
                 virtual machine's disk, a `mgear serve` keeping it for syncs (perhaps under \
                 another name of the same disk), or another program's volume; nothing was \
                 written (--force does not change this)"
            ),
            "stop that program (shut the VM down, Ctrl-C the serve), or give another volume, \
             then run the same command",
        ));
    }
    if let Some((pid, cmd)) = crate::guard::vm_holding(p) {
        return Err(crate::exit::coded_hint(
            crate::exit::USAGE,
            format!(
                "--target {target} is open in a virtual machine, process {pid} ({cmd}): a \
                 running guest reads the disk as this writes it (a `mgear boot` proof boot \
                 would report a boot of parts of two disks); nothing was written (--force does \
                 not change this)"
            ),
            "wait for the boot to end, or shut the VM down, then run the same command",
        ));
    }
    Ok(())
}

/// [`refuse_held`], for the tests of the callers' modules.
#[cfg(test)]
pub(crate) fn refuse_held_for_test(target: &Target) -> crate::Result<()> {
    refuse_held(target)
}

// The guard finds every signature it knows within this much of either end.
const _: () = assert!(crate::guard::EDGE == mgear_volume::nbd::FRESH_EDGE);

/// Open an existing volume to write in place (`mgear serve`).
pub fn open_in_place(target: &Target) -> crate::Result<Box<dyn Volume>> {
    match target {
        Target::File(p) | Target::Dev(p) => Ok(Box::new(FileVolume::open_in_place(p)?)),
        Target::Nbd(u) => Ok(Box::new(NbdVolume::connect(u)?)),
        Target::Qcow2(q) => Err(usage(format!(
            "--target qcow2:{}: serve writes raw volumes and NBD exports; serve the image with \
             `qemu-nbd -k /tmp/v.sock {}` and give nbd+unix:///?socket=/tmp/v.sock",
            q.display(),
            q.display()
        ))),
        Target::Libvirt(t) => Err(usage(format!(
            "--target {t}: serve the volume's path (virsh vol-path --pool {} {}) as file:PATH",
            t.pool, t.name
        ))),
        Target::EbsSnapshot { name, .. } => Err(usage(format!(
            "--target ebs-snapshot:{name}: a snapshot is written once, by ingest; \
             serve into a volume created from it instead"
        ))),
        Target::Rbd(_) | Target::Cinder(_) => Err(usage(format!(
            "--target {target}: serve writes raw volumes and NBD exports; serve the image with \
             `qemu-nbd -k /tmp/v.sock rbd:POOL/IMAGE` and give nbd+unix:///?socket=/tmp/v.sock"
        ))),
    }
}

/// `$XDG_STATE_HOME`, when it is set to an absolute path: the XDG base directory spec
/// says to ignore a relative one (taken as is, the key cache and the resume states moved
/// with the working directory).
pub(crate) fn xdg_state_home() -> Option<PathBuf> {
    std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
}

/// Where `mgear serve` keeps its records of the volumes it served (`crate::sync`'s), none
/// without a state directory. Here, below ingest and serve, as ingest reads them too.
pub(crate) fn serve_records_dir() -> Option<PathBuf> {
    Some(match xdg_state_home() {
        Some(s) => s.join("mgear/serve"),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".local/state/mgear/serve"),
    })
}

/// The serve record of the file at `volume`, by its device and inode, in `dir`.
pub(crate) fn serve_record_path(
    dir: &std::path::Path,
    volume: &std::path::Path,
) -> Option<PathBuf> {
    use sha2::Digest as _;
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(volume).ok()?;
    let digest = sha2::Sha256::digest(format!("{}:{}", m.dev(), m.ino()).as_bytes());
    Some(dir.join(crate::output::hex(&digest[..8])))
}

/// Whether a serve record's text names capture `name` of id `capture` (lower-case hex).
pub(crate) fn serve_record_names(text: &str, capture: &str, name: &str) -> bool {
    let mut lines = text.lines();
    lines.next() == Some("mgear-serve-record 2")
        && lines.next() == Some(&format!("capture {capture}"))
        && lines.next() == Some(&format!("name {name}"))
}

/// Whether a serve of capture `name` (`capture_id`) recorded the file at `volume` (by its
/// device and inode) as the volume it served: its syncs went into it.
pub fn served_before(volume: &std::path::Path, capture_id: &[u8; 16], name: &str) -> bool {
    let Some(path) = serve_records_dir().and_then(|d| serve_record_path(&d, volume)) else {
        return false;
    };
    let capture = crate::output::hex(capture_id);
    // Not a record of an earlier file whose inode this one was given.
    !crate::guard::born_after(volume, &path)
        && std::fs::read_to_string(&path).is_ok_and(|t| serve_record_names(&t, &capture, name))
}

/// The ingest state dir: `--state-dir`, else `$XDG_STATE_HOME/mgear/ingest` (or
/// `~/.local/state/mgear/ingest`), created 0700. Resume states and the markers of volumes
/// that have no unfinished name of their own live there (what `mgear boot` checks).
pub(crate) fn state_dir(arg: Option<PathBuf>) -> crate::Result<PathBuf> {
    let dir = match arg {
        Some(d) => d,
        None => match xdg_state_home() {
            Some(s) => s.join("mgear/ingest"),
            None => PathBuf::from(std::env::var_os("HOME").ok_or_else(|| {
                usage("neither XDG_STATE_HOME nor HOME is set: pass --state-dir DIR")
            })?)
            .join(".local/state/mgear/ingest"),
        },
    };
    crate::keyfile::private_dir(&dir, "state dir")?;
    Ok(dir)
}
