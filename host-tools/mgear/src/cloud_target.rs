//! `--target cinder:NAME`: ingest into an OpenStack Cinder volume and, with `--boot`, boot it
//! through Nova, the way the cloud runs the migrated machine.
//!
//! ```text
//! mgear ingest ... --target cinder:web01                     # OS_* or OS_CLOUD (clouds.yaml)
//! mgear ingest ... --target cinder:web01 --boot --flavor m1.small --wait-for 'login:'
//! ```
//!
//! 1. The session comes from the standard `OS_*` variables or `clouds.yaml` (Keystone v3), or
//!    the no-auth mode of a lab (`OS_AUTH_TYPE=noauth`; see `mgear_cloud::auth`).
//! 2. The volume is found by its metadata (`mgear.name`, `mgear.capture`, `mgear.generation`,
//!    `mgear.manifest_root`): a re-run, after a kill too, finds the same volume and resumes into
//!    it; one an earlier run finished (`mgear.state=complete`) is kept as it is, not written
//!    again (the machine may have run from it since; `--force` writes it). Otherwise it is created with the disk's size rounded up to whole GiB (Cinder's unit)
//!    and `mgear.state=writing`, and awaited until `available`.
//! 3. Cinder is asked where the volume lives, as a compute host asks it
//!    (`os-initialize_connection`): a Ceph backend answers `rbd` and `POOL/volume-<id>`, and the
//!    chunks are written straight into that RBD image ([`mgear_volume::RbdVolume`]), with the
//!    user Cinder names (`rbd_user`, e.g. `cinder`), `CEPH_CONF` and that user's keyring on this
//!    host, as on a compute host. Other backends (iSCSI, NVMe-oF, FC) answer another
//!    `driver_volume_type`: they need the volume attached to this host (an initiator/NQN
//!    connector, `os-reserve`, `os-initialize_connection`, the session logged in with iscsiadm
//!    or nvme-cli, `os-attach`), after which the device is a `dev:` target; `cinder:` says so.
//! 4. After the read-back check the volume is marked bootable (unless the readiness check
//!    found nothing boots from it: a data disk) and `mgear.state=complete`.
//! 5. `--boot` of a volume already attached (`in-use`: its machine runs) is refused. Otherwise it
//!    creates a server from the volume (`--flavor`, networks `"none"`), waits for
//!    ACTIVE and proves the boot from the console (`mgear_cloud::boot_from_volume`; on the
//!    compute host itself, e.g. the cloud lab, `MGEAR_CLOUD_NOVA_INSTANCES` names the instances
//!    directory whose `console.log` shows a guest that powered off at once). The server is left
//!    running: it is the migrated machine.

use std::path::PathBuf;
use std::time::Duration;

use mgear_cloud::cinder::meta;
use mgear_cloud::{
    boot_from_volume, Auth, Cinder, CloudError, NovaBoot, NovaBootSpec, Session, VolumeFor,
};
use mgear_volume::{
    Existing, Finished, Found, Geometry, Prepare, RbdSpec, RbdVolume, Volume, WriteAt,
};

use crate::exit::{coded, usage, IO};
use crate::output::hex;

/// How long a new volume may take to become `available`.
const AVAILABLE_WITHIN: Duration = Duration::from_secs(300);

/// What a capture generation is, as a volume's metadata names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureFacts {
    /// Capture id, hex.
    pub capture_id: String,
    /// Generation.
    pub generation: u32,
    /// Manifest root (blake3 of the signed manifest bytes), hex.
    pub manifest_root: String,
    /// Whether the volume is marked bootable when finished: not for a disk the readiness
    /// check found boots neither BIOS nor UEFI (a data disk), which was marked bootable
    /// all the same.
    pub bootable: bool,
}

impl CaptureFacts {
    /// The facts of the generation `manifest` describes.
    pub fn of(manifest: &image_format::layout::Manifest) -> Self {
        CaptureFacts {
            capture_id: hex(&manifest.capture_id),
            generation: manifest.generation,
            manifest_root: blake3::hash(&manifest.signed_bytes()).to_hex().to_string(),
            bootable: true,
        }
    }
}

/// A cloud error with the CLI's exit code: settings the operator fixes are 2, the cloud
/// failing or refusing is 3.
pub fn cloud_err(e: CloudError) -> crate::Error {
    match e {
        CloudError::Config(_) | CloudError::Unsupported(_) => usage(e.to_string()),
        // Credentials and project the operator fixes (exit 2), not a cloud that failed.
        CloudError::Http {
            status: 401 | 403, ..
        } => usage(format!(
            "{e}: the cloud refused these credentials: check the OS_* settings (or OS_CLOUD's \
             entry in clouds.yaml), the project, and the user's roles on it"
        )),
        CloudError::Http {
            status: 400,
            ref message,
            ..
        } if message.contains("Malformed request url") => usage(format!(
            "{e}: the project in the endpoint's URL is not the one the request is made for: \
             OS_PROJECT_ID (or the project of the token) and the project id in the Cinder \
             endpoint (the catalog, or OS_BLOCK_STORAGE_ENDPOINT_OVERRIDE / OS_ENDPOINT_OVERRIDE / \
             OS_VOLUME_API_URL) must agree"
        )),
        // The settings name something this cloud does not have: the operator's to fix (it
        // was exit 3 with "reconnect it").
        CloudError::Http {
            status: 404,
            ref message,
            ..
        } if message.to_ascii_lowercase().contains("volume type") => usage(format!(
            "{e}: OS_VOLUME_TYPE names a volume type this cloud does not have: give one of \
             `openstack volume type list`, or unset it for the default"
        )),
        // What the API's router says of a path it has no route for (a missing volume is
        // "Volume X could not be found"): the endpoint is wrong.
        CloudError::Http {
            status: 404,
            ref message,
            ..
        } if message.contains("The resource could not be found") => usage(format!(
            "{e}: the service answered that this API path does not exist: check the endpoint \
             (the catalog, or OS_BLOCK_STORAGE_ENDPOINT_OVERRIDE / OS_COMPUTE_ENDPOINT_OVERRIDE; \
             a Cinder endpoint ends in /v3/PROJECT_ID)"
        )),
        CloudError::Http { status: 413, .. } => crate::exit::coded_hint(
            IO,
            e.to_string(),
            "the project's quota is used up (`openstack quota show`): delete volumes it no \
             longer needs or have the quota raised, then run the same command again",
        ),
        _ => coded(IO, e.to_string()),
    }
}

/// Whether `s` is written as a UUID (how Cinder writes volume ids).
fn looks_like_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12])
        && parts
            .iter()
            .all(|p| p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// `cinder:NAME` is a name: the volume is made, or found by its capture metadata. An existing
/// volume's id given there made a new volume named by that id, one volume's name then another's
/// id: refused (exit 2), saying what to give.
fn refuse_volume_id_as_name(cinder: &Cinder, name: &str) -> crate::Result<()> {
    if !looks_like_uuid(name) {
        return Ok(());
    }
    match cinder.get(name) {
        Ok(v) => Err(usage(format!(
            "cinder:{name} is the id of an existing volume ({:?}, {} GiB, {}): cinder:NAME takes \
             the name of the volume to make (or to find again by its capture metadata), not a \
             volume to write into; give a name, e.g. cinder:web01 (to write into that volume \
             itself, ingest into rbd: of its image, volume-{name}, with --force)",
            v.name, v.size, v.status
        ))),
        Err(_) => Ok(()),
    }
}

/// A session from the environment (`OS_*`, `OS_CLOUD`).
pub fn session() -> crate::Result<Session> {
    let auth = Auth::from_env().map_err(cloud_err)?;
    Session::connect(auth, Duration::from_secs(120)).map_err(cloud_err)
}

/// The volume an earlier ingest finished for this capture generation (`mgear.state=complete`:
/// written and read back), if there is one. It is kept as it is, not written again: the machine
/// may have run from it since, and a second write would undo what it did (`--force` writes it).
pub fn finished_volume(name: &str, capture: &CaptureFacts) -> crate::Result<Option<Kept>> {
    let session = session()?;
    let cinder = Cinder::new(&session);
    let want = VolumeFor {
        name: name.to_string(),
        size_bytes: 0,
        volume_type: None,
        availability_zone: None,
        capture_id: capture.capture_id.clone(),
        generation: u64::from(capture.generation),
        manifest_root: capture.manifest_root.clone(),
    };
    let found = cinder
        .find_by_metadata(&want.identity())
        .map_err(cloud_err)?;
    let [v] = found.as_slice() else {
        return Ok(None);
    };
    if v.metadata.get(meta::STATE).map(String::as_str) != Some(meta::COMPLETE) {
        return Ok(None);
    }
    Ok(Some(Kept {
        id: v.id.clone(),
        name: v.name.clone(),
        rbd: rbd_spec(&cinder, v)?,
    }))
}

/// A volume an earlier ingest finished ([`finished_volume`]): it is read back before it is
/// called the capture (anyone who can write the project's volume metadata can mark any
/// volume so, and the machine may have run from it since).
pub struct Kept {
    pub id: String,
    /// Its Cinder name (it may have been renamed since, or the metadata copied elsewhere).
    pub name: String,
    /// Where its bytes are.
    pub rbd: RbdSpec,
}

/// The RBD image behind `volume`, as the backend reports it (or by the RBD driver's naming
/// in `MGEAR_CINDER_RBD_POOL` where the connection info is kept for admins).
fn rbd_spec(cinder: &Cinder, volume: &mgear_cloud::cinder::Volume) -> crate::Result<RbdSpec> {
    let fallback_pool = std::env::var("MGEAR_CINDER_RBD_POOL").ok();
    let img = cinder
        .rbd_image(volume, fallback_pool.as_deref())
        .map_err(cloud_err)?;
    let user = img
        .user
        .clone()
        .or_else(|| std::env::var("MGEAR_CLOUD_RBD_USER").ok());
    Ok(RbdSpec::parse(&format!(
        "rbd:{}/{}{}",
        img.pool,
        img.image,
        user.map(|u| format!("?id={u}")).unwrap_or_default()
    ))?)
}

/// Find or create the volume of `name` for this capture and open its RBD image for writing.
pub fn open(name: &str, prep: &Prepare, capture: &CaptureFacts) -> crate::Result<Box<dyn Volume>> {
    let session = session()?;
    let cinder = Cinder::new(&session);
    refuse_volume_id_as_name(&cinder, name)?;
    let want = VolumeFor {
        name: name.to_string(),
        size_bytes: prep.disk_size,
        volume_type: std::env::var("OS_VOLUME_TYPE")
            .ok()
            .filter(|t| !t.is_empty()),
        availability_zone: None,
        capture_id: capture.capture_id.clone(),
        generation: u64::from(capture.generation),
        manifest_root: capture.manifest_root.clone(),
    };
    let ensured = cinder
        .ensure_volume(&want, AVAILABLE_WITHIN)
        .map_err(cloud_err)?;
    let volume = ensured.volume;
    eprintln!(
        "mgear: Cinder volume {} ({}, {} GiB) {}",
        volume.id,
        name,
        volume.size,
        if ensured.created {
            "created"
        } else {
            "found by its capture metadata (an earlier run of this ingest made it): writing \
             into it, from where this host's state of that run says, else from the start"
        }
    );
    if ensured.created {
        // Cinder names need not be unique, but commands that take one (`openstack volume
        // show NAME`, `server create --volume NAME`) then refuse it: say so now. Best effort:
        // a cloud that refuses the lookup only loses the note.
        let others: Vec<String> = cinder
            .named(name)
            .unwrap_or_default()
            .into_iter()
            .filter(|v| v.id != volume.id)
            .map(|v| {
                let g = v.metadata.get(meta::GENERATION);
                // Another machine's volume under this name is not "generation 1" of this one.
                match (v.metadata.get(meta::CAPTURE), g) {
                    (Some(c), Some(g)) if *c == capture.capture_id => {
                        format!("{} (generation {g} of this capture)", v.id)
                    }
                    (Some(c), Some(g)) => format!(
                        "{} (another capture, {}..., generation {g})",
                        v.id,
                        c.get(..8).unwrap_or(c)
                    ),
                    _ => format!("{} (not made by mgear)", v.id),
                }
            })
            .collect();
        if !others.is_empty() {
            eprintln!(
                "mgear: note: Cinder already has a volume named {name}: {}. This one is {}, \
                 under the same name (the others are kept: a machine may run from them); \
                 commands that take a volume by name need its id now, or name each generation's \
                 volume apart (--target cinder:{name}-g{})",
                others.join(", "),
                volume.id,
                capture.generation
            );
        }
    }
    let rbd = rbd_spec(&cinder, &volume)
        .and_then(|spec| Ok(RbdVolume::open(&spec, prep, Existing::Open)?));
    let rbd = match rbd {
        Ok(r) => r,
        Err(e) => {
            // Nothing was written into a volume this run created: it goes again rather than
            // stay behind empty (a re-run creates it anew once Ceph can be reached).
            if ensured.created {
                match cinder.delete(&volume.id) {
                    Ok(()) => eprintln!(
                        "mgear: deleted the new, empty Cinder volume {} again",
                        volume.id
                    ),
                    Err(d) => eprintln!(
                        "mgear: could not delete the new, empty Cinder volume {} ({d}): delete \
                         it by hand (openstack volume delete {})",
                        volume.id, volume.id
                    ),
                }
            }
            return Err(e);
        }
    };
    Ok(Box::new(CinderVolume {
        bootable: capture.bootable,
        rbd,
        session,
        name: name.to_string(),
        volume_id: volume.id,
    }))
}

/// A Cinder volume written through its RBD image; finishing marks it bootable and complete.
struct CinderVolume {
    bootable: bool,
    rbd: RbdVolume,
    session: Session,
    name: String,
    volume_id: String,
}

impl Volume for CinderVolume {
    fn size(&self) -> u64 {
        self.rbd.size()
    }
    fn describe(&self) -> String {
        format!(
            "cinder:{} (volume {}, {})",
            self.name,
            self.volume_id,
            self.rbd.describe()
        )
    }
    fn state_key(&self) -> String {
        format!("cinder_{}", self.volume_id)
    }
    fn found(&self) -> Found {
        self.rbd.found()
    }
    fn geometry(&self) -> Geometry {
        self.rbd.geometry()
    }
    fn write_at(&mut self, offset: u64, data: &[u8]) -> mgear_volume::Result<()> {
        self.rbd.write_at(offset, data)
    }
    fn write_batch(&mut self, writes: &[WriteAt<'_>]) -> mgear_volume::Result<()> {
        self.rbd.write_batch(writes)
    }
    fn write_zeroes(&mut self, offset: u64, len: u64) -> mgear_volume::Result<()> {
        self.rbd.write_zeroes(offset, len)
    }
    fn flush(&mut self) -> mgear_volume::Result<()> {
        self.rbd.flush()
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> mgear_volume::Result<()> {
        self.rbd.read_at(offset, buf)
    }
    fn reads_as_zeros(&mut self, offset: u64, len: u64) -> bool {
        self.rbd.reads_as_zeros(offset, len)
    }
    fn concurrent_reader(
        &mut self,
    ) -> mgear_volume::Result<Option<Box<dyn mgear_volume::VolumeReader>>> {
        self.rbd.concurrent_reader()
    }
    fn finish(self: Box<Self>) -> mgear_volume::Result<Finished> {
        let CinderVolume {
            rbd,
            session,
            volume_id,
            bootable,
            ..
        } = *self;
        let mut done = Box::new(rbd).finish()?;
        let cinder = Cinder::new(&session);
        let cloud = |e: CloudError| mgear_volume::Error::Tool(e.to_string());
        cinder.set_bootable(&volume_id, bootable).map_err(cloud)?;
        cinder
            .set_metadata(
                &volume_id,
                &[(meta::STATE.to_string(), meta::COMPLETE.to_string())].into(),
            )
            .map_err(cloud)?;
        done.volume = Some(volume_id);
        Ok(done)
    }
}

/// The capture's disk, decrypted chunk by chunk on demand (the last chunk cached), as
/// `mgear_boot` reads a disk: what the readiness check looks at before anything is written.
struct CaptureDisk<'a, S: image_format::Store> {
    reader: &'a mut image_format::CaptureReader<S>,
    cached: Option<(u64, Vec<u8>)>,
}

impl<S: image_format::Store> mgear_boot::ReadAt for CaptureDisk<'_, S> {
    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> mgear_boot::Result<()> {
        let size = self.reader.disk_size();
        let chunk = u64::from(self.reader.chunk_size()).max(1);
        let fits = offset
            .checked_add(buf.len() as u64)
            .is_some_and(|end| end <= size);
        if !fits {
            return Err(mgear_boot::BootError::Format(format!(
                "{} bytes at offset {offset} lie beyond the {size}-byte disk",
                buf.len()
            )));
        }
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let index = pos / chunk;
            let within = (pos % chunk) as usize;
            if self.cached.as_ref().map(|c| c.0) != Some(index) {
                let data = self
                    .reader
                    .read_chunks(&[index], 1)
                    .map_err(|e| {
                        mgear_boot::BootError::Format(format!(
                            "reading chunk {index} of the capture: {e}"
                        ))
                    })?
                    .pop();
                let bytes = match data {
                    Some(image_format::ChunkData::Data(d)) => d.into_vec(),
                    Some(image_format::ChunkData::Zero { len }) => vec![0; len as usize],
                    None => {
                        return Err(mgear_boot::BootError::Format(format!(
                            "chunk {index} of the capture could not be read"
                        )))
                    }
                };
                self.cached = Some((index, bytes));
            }
            let Some((_, bytes)) = &self.cached else {
                break;
            };
            let n = bytes.len().saturating_sub(within).min(buf.len() - done);
            if n == 0 {
                return Err(mgear_boot::BootError::Format(format!(
                    "chunk {index} of the capture is shorter than its place on the disk"
                )));
            }
            buf[done..done + n].copy_from_slice(&bytes[within..within + n]);
            done += n;
        }
        Ok(())
    }
}

/// Whether the capture's disk boots under BIOS and under UEFI (boot code in its MBR; an EFI
/// System Partition with a loader), read before anything is written.
pub fn boot_firmware<S: image_format::Store>(
    reader: &mut image_format::CaptureReader<S>,
) -> crate::Result<(bool, bool)> {
    let facts = disk_facts(reader)?;
    Ok((facts.bios_bootable, facts.uefi_bootable))
}

/// What `mgear_boot` reads of the capture's disk (partitions, boot code, the guest's
/// drivers), decrypting only the chunks it reads.
fn disk_facts<S: image_format::Store>(
    reader: &mut image_format::CaptureReader<S>,
) -> crate::Result<mgear_boot::DiskFacts> {
    let size = reader.disk_size();
    Ok(mgear_boot::inspect_disk(
        &mut CaptureDisk {
            reader,
            cached: None,
        },
        size,
    )?)
}

/// Check the capture against the `openstack` readiness profile (bus virtio, BIOS or UEFI
/// firmware, size in whole GiB) before anything is written to a Cinder volume: an error
/// finding (the guest will not boot there) refuses the ingest (exit 1) with what to do;
/// warnings are printed. The size rounding is no finding here: the volume is rounded up.
pub fn check_openstack_ready<S: image_format::Store>(
    reader: &mut image_format::CaptureReader<S>,
) -> crate::Result<bool> {
    let profile = mgear_boot::profile_by_name("openstack")
        .ok_or_else(|| crate::err!("the openstack readiness profile is missing"))?;
    let facts = disk_facts(reader)?;
    let findings: Vec<_> = mgear_boot::check_profile(&facts, profile)
        .into_iter()
        .filter(|f| f.severity > mgear_boot::Severity::Info && f.code != "size")
        .collect();
    for f in &findings {
        eprintln!(
            "mgear: openstack readiness: {:?} {}: {}",
            f.severity, f.code, f.message
        );
    }
    let errors: Vec<String> = findings
        .iter()
        .filter(|f| f.severity == mgear_boot::Severity::Error)
        .map(|f| format!("{}: {}", f.code, f.message))
        .collect();
    if errors.is_empty() {
        // A disk nothing boots from is a data volume: not marked bootable.
        let bootable = !findings.iter().any(|f| f.code == "not-bootable");
        if !bootable {
            eprintln!("mgear: the volume will not be marked bootable (a data volume)");
        }
        Ok(bootable)
    } else {
        Err(coded(
            crate::exit::FOUND,
            format!(
                "the disk is not ready for OpenStack: {}; ingest into file:/dev: with --adapt \
                 (or fix the source) and upload that instead",
                errors.join("; ")
            ),
        ))
    }
}

/// What `ingest --boot` needs for a Cinder target.
#[derive(Debug, Clone)]
pub struct BootArgs {
    /// Machine name (the server's name too).
    pub name: String,
    /// The ingested volume.
    pub volume_id: String,
    /// The machine's other ingested volumes, attached after it in order.
    pub data_volumes: Vec<String>,
    /// Flavor name or id.
    pub flavor: String,
    /// Regex proving the boot.
    pub wait_for: String,
    /// Seconds for the regex (and for ACTIVE).
    pub timeout: u64,
}

/// Boot the volume through Nova; the server is left running.
/// Refuses a `--flavor` this cloud does not have before anything is written (the volume was
/// created, written and marked complete, then the boot said only "no flavor").
pub fn check_flavor(flavor: &str) -> crate::Result<()> {
    let session = session()?;
    match mgear_cloud::nova::Nova::new(&session)
        .find_flavor(flavor)
        .map_err(cloud_err)?
    {
        Some(_) => Ok(()),
        None => Err(usage(format!(
            "--flavor {flavor:?}: no such flavor in this cloud (`openstack flavor list` names \
             them): nothing was written; give an existing one"
        ))),
    }
}

pub fn boot(args: &BootArgs) -> crate::Result<NovaBoot> {
    let session = session()?;
    // A volume already attached runs its machine: a second server from it would fail in
    // Nova (after a wait) and say less.
    let volume = Cinder::new(&session)
        .get(&args.volume_id)
        .map_err(cloud_err)?;
    if volume.status == "in-use" {
        return Err(usage(format!(
            "volume {} is attached to a server already (in-use): the machine runs from it, so \
             --boot starts no other. To boot it anew, delete that server (openstack server list \
             --all-projects shows it), then run this again",
            args.volume_id
        )));
    }
    let timeout = Duration::from_secs(args.timeout);
    boot_from_volume(
        &session,
        &NovaBootSpec {
            server_name: args.name.clone(),
            volume_id: args.volume_id.clone(),
            data_volumes: args.data_volumes.clone(),
            flavor: args.flavor.clone(),
            create_flavor: None,
            wait_for: args.wait_for.clone(),
            active_timeout: timeout,
            timeout,
            console_dir: std::env::var_os("MGEAR_CLOUD_NOVA_INSTANCES")
                .filter(|d| !d.is_empty())
                .map(PathBuf::from),
            stop: Some(crate::signals::stop_requested),
        },
    )
    .map_err(|e| match e {
        CloudError::Stopped { id } => crate::exit::coded_hint(
            IO,
            format!(
                "stopped by Ctrl-C or SIGTERM while waiting for server {id} to prove its boot: \
                 the volume {} is written and verified; the server is left as it is",
                args.volume_id
            ),
            format!(
                "see how it is doing with `openstack console log show {id}`; to prove the boot \
                 again, delete it (`openstack server delete {id}`) and run the same command"
            ),
        ),
        e => cloud_err(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::code_of;

    #[test]
    fn a_volume_id_is_told_from_a_name() {
        assert!(looks_like_uuid("0f8e1b2c-3d4e-4f50-8a6b-7c8d9e0f1a2b"));
        for name in [
            "web01",
            "web01-g2",
            "0f8e1b2c-3d4e-4f50-8a6b",
            "0f8e1b2c3d4e4f508a6b7c8d9e0f1a2b",
        ] {
            assert!(!looks_like_uuid(name), "{name}");
        }
    }

    #[test]
    fn errors_map_to_exit_codes() {
        assert_eq!(
            code_of(&cloud_err(CloudError::Unsupported("iscsi".into()))),
            2
        );
        let http = |status: u16, url: &str, message: &str| CloudError::Http {
            method: "POST".into(),
            url: url.into(),
            status,
            message: message.into(),
        };
        let e = cloud_err(http(
            404,
            "http://c/v3/p/volumes",
            "Volume type with name gold could not be found.",
        ));
        assert_eq!(code_of(&e), 2);
        assert!(e.to_string().contains("OS_VOLUME_TYPE"), "{e}");
        for url in [
            "http://c/v2/p/volumes",
            "http://c/nope/volumes/detail?limit=1",
        ] {
            let e = cloud_err(http(404, url, "The resource could not be found."));
            assert_eq!(code_of(&e), 2);
            assert!(e.to_string().contains("check the endpoint"), "{e}");
        }
        // A volume that is gone is no endpoint mistake.
        let e = cloud_err(http(
            404,
            "http://c/v3/p/volumes/abc",
            "Volume abc could not be found.",
        ));
        assert_eq!(code_of(&e), 3);
        let e = cloud_err(http(413, "http://c/v3/p/volumes", "VolumeLimitExceeded"));
        assert_eq!(code_of(&e), 3);
        let hint = crate::exit::hint(&e, "ingest");
        assert!(
            hint.contains("quota") && !hint.contains("reconnect"),
            "{hint}"
        );
        assert_eq!(
            code_of(&cloud_err(CloudError::Transport {
                method: "GET".into(),
                url: "u".into(),
                message: "refused".into()
            })),
            3
        );
    }
}
